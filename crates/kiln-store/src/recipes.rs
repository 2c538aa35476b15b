//! Image recipes: immutable (name, version) records with an opaque JSON body.

use time::OffsetDateTime;

use crate::error::{Result, StoreError, db};
use crate::{
    Store, Tags, Version, fmt_ts, is_unique_violation, json_from_text, now, parse_ts, tags_from_json,
    tags_to_json, version_from_row, with_pool,
};

/// A recipe to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecipe {
    pub name: String,
    pub version: Version,
    /// The parent image reference as written (a managed name, an ARN, a path…).
    pub parent_image: String,
    /// The whole recipe in the API's JSON shape; the store does not look inside.
    pub body: serde_json::Value,
    pub tags: Tags,
}

/// A recorded recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub name: String,
    pub version: Version,
    pub parent_image: String,
    pub body: serde_json::Value,
    pub created_at: OffsetDateTime,
    pub tags: Tags,
}

#[derive(sqlx::FromRow)]
struct RecipeRow {
    name: String,
    version: String,
    parent_image: String,
    body: String,
    created_at: String,
    tags: String,
}

impl RecipeRow {
    fn into_recipe(self) -> Result<Recipe> {
        let what = format!("image recipe {} {}", self.name, self.version);
        Ok(Recipe {
            version: version_from_row(&self.version, &what)?,
            body: json_from_text(&self.body, &what, "body")?,
            created_at: parse_ts(&self.created_at, &what)?,
            tags: tags_from_json(&self.tags, &what)?,
            name: self.name,
            parent_image: self.parent_image,
        })
    }
}

const RECIPE_COLUMNS: &str = "name, version, parent_image, body, created_at, tags";

impl Store {
    /// Record a new recipe version; an existing version is [`StoreError::RecipeExists`].
    pub async fn create_recipe(&self, new: &NewRecipe) -> Result<Recipe> {
        let recipe = Recipe {
            name: new.name.clone(),
            version: new.version,
            parent_image: new.parent_image.clone(),
            body: new.body.clone(),
            created_at: now(),
            tags: new.tags.clone(),
        };
        let sql = "INSERT INTO recipes (name, version, version_major, version_minor, version_patch, \
                   parent_image, body, created_at, tags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        let result = with_pool!(self, pool => {
            sqlx::query(sql)
                .bind(&recipe.name)
                .bind(recipe.version.to_string())
                .bind(i64::from(recipe.version.major))
                .bind(i64::from(recipe.version.minor))
                .bind(i64::from(recipe.version.patch))
                .bind(&recipe.parent_image)
                .bind(recipe.body.to_string())
                .bind(fmt_ts(recipe.created_at))
                .bind(tags_to_json(&recipe.tags))
                .execute(pool)
                .await
        });
        match result {
            Ok(_) => Ok(recipe),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::RecipeExists { name: new.name.clone(), version: new.version })
            }
            Err(e) => Err(db("create an image recipe")(e)),
        }
    }

    /// One recipe version.
    pub async fn get_recipe(&self, name: &str, version: &Version) -> Result<Recipe> {
        let sql = format!("SELECT {RECIPE_COLUMNS} FROM recipes WHERE name = $1 AND version = $2");
        let row: Option<RecipeRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(name)
                .bind(version.to_string())
                .fetch_optional(pool)
                .await
                .map_err(db("read an image recipe"))?
        });
        row.ok_or_else(|| StoreError::RecipeNotFound { name: name.to_owned(), version: *version })?
            .into_recipe()
    }

    /// Recipes ordered by name then version; only versions of `name` when given.
    pub async fn list_recipes(&self, name: Option<&str>) -> Result<Vec<Recipe>> {
        let filter = if name.is_some() { "WHERE name = $1 " } else { "" };
        let sql = format!(
            "SELECT {RECIPE_COLUMNS} FROM recipes {filter}\
             ORDER BY name, version_major, version_minor, version_patch"
        );
        let rows: Vec<RecipeRow> = with_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql);
            if let Some(name) = name {
                q = q.bind(name);
            }
            q.fetch_all(pool).await.map_err(db("list image recipes"))?
        });
        rows.into_iter().map(RecipeRow::into_recipe).collect()
    }

    /// Remove one recipe version.
    pub async fn delete_recipe(&self, name: &str, version: &Version) -> Result<()> {
        let done = with_pool!(self, pool => {
            sqlx::query("DELETE FROM recipes WHERE name = $1 AND version = $2")
                .bind(name)
                .bind(version.to_string())
                .execute(pool)
                .await
                .map_err(db("delete an image recipe"))?
                .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::RecipeNotFound { name: name.to_owned(), version: *version });
        }
        Ok(())
    }
}
