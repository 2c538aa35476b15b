//! Components: immutable (name, version) records holding the document text as given.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{Result, StoreError, db};
use crate::{
    Store, Tags, Version, VersionFilter, fmt_ts, is_unique_violation, now, parse_ts, tags_from_json,
    tags_to_json, version_from_row, with_pool,
};

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComponentSource {
    /// Read from a resource file given to `kiln build`.
    File,
    /// Shipped with kiln.
    Builtin,
    /// Created through the API.
    Api,
}

impl ComponentSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentSource::File => "file",
            ComponentSource::Builtin => "builtin",
            ComponentSource::Api => "api",
        }
    }
}

impl fmt::Display for ComponentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ComponentSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(ComponentSource::File),
            "builtin" => Ok(ComponentSource::Builtin),
            "api" => Ok(ComponentSource::Api),
            other => Err(format!("unknown component source {other:?}")),
        }
    }
}

/// A component to record. The store computes the document's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewComponent {
    pub name: String,
    pub version: Version,
    pub platform: String,
    pub description: String,
    /// The document text exactly as given (the store never parses it).
    pub document: String,
    pub source: ComponentSource,
    pub tags: Tags,
}

/// A recorded component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub version: Version,
    pub platform: String,
    pub description: String,
    pub document: String,
    /// Lowercase hex SHA-256 of `document`'s UTF-8 bytes.
    pub sha256: String,
    pub source: ComponentSource,
    pub created_at: OffsetDateTime,
    pub tags: Tags,
}

/// The SHA-256 the store records for a document text.
pub(crate) fn document_sha256(document: &str) -> String {
    hex::encode(Sha256::digest(document.as_bytes()))
}

#[derive(sqlx::FromRow)]
struct ComponentRow {
    name: String,
    version: String,
    platform: String,
    description: String,
    document: String,
    digest: String,
    source: String,
    created_at: String,
    tags: String,
}

impl ComponentRow {
    fn into_component(self) -> Result<Component> {
        let what = format!("component {} {}", self.name, self.version);
        Ok(Component {
            version: version_from_row(&self.version, &what)?,
            source: self
                .source
                .parse()
                .map_err(|detail| StoreError::Corrupt { what: what.clone(), detail })?,
            created_at: parse_ts(&self.created_at, &what)?,
            tags: tags_from_json(&self.tags, &what)?,
            name: self.name,
            platform: self.platform,
            description: self.description,
            document: self.document,
            sha256: self.digest,
        })
    }
}

const COMPONENT_COLUMNS: &str =
    "name, version, platform, description, document, digest, source, created_at, tags";

impl Store {
    /// Record a new component version. A version that exists already is refused
    /// ([`StoreError::ComponentExists`]): components are immutable.
    pub async fn create_component(&self, new: &NewComponent) -> Result<Component> {
        let component = Component {
            name: new.name.clone(),
            version: new.version,
            platform: new.platform.clone(),
            description: new.description.clone(),
            document: new.document.clone(),
            sha256: document_sha256(&new.document),
            source: new.source,
            created_at: now(),
            tags: new.tags.clone(),
        };
        let sql = "INSERT INTO components (name, version, version_major, version_minor, \
                   version_patch, platform, description, document, digest, source, created_at, tags) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
        let result = with_pool!(self, pool => {
            sqlx::query(sql)
                .bind(&component.name)
                .bind(component.version.to_string())
                .bind(i64::from(component.version.major))
                .bind(i64::from(component.version.minor))
                .bind(i64::from(component.version.patch))
                .bind(&component.platform)
                .bind(&component.description)
                .bind(&component.document)
                .bind(&component.sha256)
                .bind(component.source.as_str())
                .bind(fmt_ts(component.created_at))
                .bind(tags_to_json(&component.tags))
                .execute(pool)
                .await
        });
        match result {
            Ok(_) => Ok(component),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::ComponentExists { name: new.name.clone(), version: new.version })
            }
            Err(e) => Err(db("create a component")(e)),
        }
    }

    /// Record a component unless the same version with the same document is recorded
    /// already (then return that one): for built-in components registered at every start.
    /// The same version with a different document is still [`StoreError::ComponentExists`].
    pub async fn ensure_component(&self, new: &NewComponent) -> Result<Component> {
        match self.create_component(new).await {
            Err(StoreError::ComponentExists { name, version }) => {
                let existing = self.get_component(&new.name, &new.version).await?;
                if existing.sha256 == document_sha256(&new.document) {
                    Ok(existing)
                } else {
                    Err(StoreError::ComponentExists { name, version })
                }
            }
            other => other,
        }
    }

    /// One component version, exactly.
    pub async fn get_component(&self, name: &str, version: &Version) -> Result<Component> {
        let sql = format!("SELECT {COMPONENT_COLUMNS} FROM components WHERE name = $1 AND version = $2");
        let row: Option<ComponentRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(name)
                .bind(version.to_string())
                .fetch_optional(pool)
                .await
                .map_err(db("read a component"))?
        });
        match row {
            Some(row) => row.into_component(),
            None => Err(StoreError::ComponentNotFound {
                name: name.to_owned(),
                filter: version.to_string(),
                available: self.component_versions(name).await?,
            }),
        }
    }

    /// Every version of a component, lowest first (empty when there is no such component).
    pub async fn component_versions(&self, name: &str) -> Result<Vec<Version>> {
        let rows: Vec<(String,)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT version FROM components WHERE name = $1 \
                 ORDER BY version_major, version_minor, version_patch",
            )
            .bind(name)
            .fetch_all(pool)
            .await
            .map_err(db("list component versions"))?
        });
        rows.iter().map(|(v,)| version_from_row(v, &format!("component {name}"))).collect()
    }

    /// The highest version of `name` that `filter` accepts (`1.2.3`, `1.2.x`, `1.x.x`,
    /// `x.x.x`). No match is [`StoreError::ComponentNotFound`], listing the versions that
    /// exist; a recipe that references such a version cannot be built.
    pub async fn resolve_component(&self, name: &str, filter: &VersionFilter) -> Result<Component> {
        if let Some(v) = filter.exact() {
            return self.get_component(name, &v).await;
        }
        let available = self.component_versions(name).await?;
        match filter.best(&available) {
            Some(v) => self.get_component(name, &v).await,
            None => Err(StoreError::ComponentNotFound {
                name: name.to_owned(),
                filter: filter.to_string(),
                available,
            }),
        }
    }

    /// Components ordered by name then version; only versions of `name` when given.
    pub async fn list_components(&self, name: Option<&str>) -> Result<Vec<Component>> {
        let filter = if name.is_some() { "WHERE name = $1 " } else { "" };
        let sql = format!(
            "SELECT {COMPONENT_COLUMNS} FROM components {filter}\
             ORDER BY name, version_major, version_minor, version_patch"
        );
        let rows: Vec<ComponentRow> = with_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql);
            if let Some(name) = name {
                q = q.bind(name);
            }
            q.fetch_all(pool).await.map_err(db("list components"))?
        });
        rows.into_iter().map(ComponentRow::into_component).collect()
    }

    /// Remove one component version.
    pub async fn delete_component(&self, name: &str, version: &Version) -> Result<()> {
        let done = with_pool!(self, pool => {
            sqlx::query("DELETE FROM components WHERE name = $1 AND version = $2")
                .bind(name)
                .bind(version.to_string())
                .execute(pool)
                .await
                .map_err(db("delete a component"))?
                .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::ComponentNotFound {
                name: name.to_owned(),
                filter: version.to_string(),
                available: self.component_versions(name).await?,
            });
        }
        Ok(())
    }
}
