//! Images: one row per build version (`NAME/VERSION/BUILD`), its state machine and the
//! history of every state change.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use crate::error::{Result, StoreError, db};
use crate::{
    Store, Tags, Version, fmt_ts, json_from_text, now, parse_ts, tags_from_json, tags_to_json,
    version_from_row, with_pool,
};

/// Image Builder's image states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ImageState {
    Pending,
    Building,
    Testing,
    Distributing,
    Integrating,
    Available,
    Failed,
    Cancelled,
    Deprecated,
    Disabled,
    Deleted,
}

use ImageState::*;

impl ImageState {
    /// Every state, in lifecycle order.
    pub const ALL: [ImageState; 11] = [
        Pending,
        Building,
        Testing,
        Distributing,
        Integrating,
        Available,
        Failed,
        Cancelled,
        Deprecated,
        Disabled,
        Deleted,
    ];

    /// The states of a build that has not finished: PENDING, BUILDING, TESTING,
    /// DISTRIBUTING, INTEGRATING.
    pub const IN_PROGRESS: [ImageState; 5] = [Pending, Building, Testing, Distributing, Integrating];

    /// The API spelling: `PENDING`, `AVAILABLE`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Pending => "PENDING",
            Building => "BUILDING",
            Testing => "TESTING",
            Distributing => "DISTRIBUTING",
            Integrating => "INTEGRATING",
            Available => "AVAILABLE",
            Failed => "FAILED",
            Cancelled => "CANCELLED",
            Deprecated => "DEPRECATED",
            Disabled => "DISABLED",
            Deleted => "DELETED",
        }
    }

    /// Whether the build is still running (the image is in [`ImageState::IN_PROGRESS`]).
    pub fn is_in_progress(self) -> bool {
        Self::IN_PROGRESS.contains(&self)
    }

    /// The states this state may change to. A build moves forward through the build
    /// stages (skipping those it does not have, such as TESTING without tests) to
    /// AVAILABLE, or to FAILED or CANCELLED from any of them; an AVAILABLE image is retired
    /// through DEPRECATED, DISABLED and DELETED (each may be skipped); FAILED and CANCELLED
    /// can only be DELETED; DELETED is final.
    pub fn next_states(self) -> &'static [ImageState] {
        match self {
            Pending => &[Building, Failed, Cancelled],
            Building => &[Testing, Distributing, Integrating, Available, Failed, Cancelled],
            Testing => &[Distributing, Integrating, Available, Failed, Cancelled],
            Distributing => &[Integrating, Available, Failed, Cancelled],
            Integrating => &[Available, Failed, Cancelled],
            Available => &[Deprecated, Disabled, Deleted],
            Deprecated => &[Disabled, Deleted],
            Disabled => &[Deleted],
            Failed | Cancelled => &[Deleted],
            Deleted => &[],
        }
    }

    /// Whether `self → to` is an allowed transition.
    pub fn can_become(self, to: ImageState) -> bool {
        self.next_states().contains(&to)
    }
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ImageState::ALL.into_iter().find(|st| st.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<&str> = ImageState::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown image state {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// `arn:aws:imagebuilder:REGION:ACCOUNT:image/NAME/VERSION/BUILD`.
pub fn image_arn(region: &str, account: &str, name: &str, version: &Version, build: u32) -> String {
    format!("arn:aws:imagebuilder:{region}:{account}:image/{name}/{version}/{build}")
}

/// A build to record: [`Store::create_image`] gives it the next build number and PENDING.
#[derive(Debug, Clone, PartialEq)]
pub struct NewImage {
    pub name: String,
    pub version: Version,
    pub region: String,
    pub account: String,
    /// The recipe as built, in the API's JSON shape.
    pub recipe: serde_json::Value,
    pub tags: Tags,
}

/// One image build version.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub arn: String,
    pub name: String,
    pub version: Version,
    pub build: u32,
    pub state: ImageState,
    /// Why the image is in its state (set with the transition; kept when a later
    /// transition gives none).
    pub reason: Option<String>,
    pub recipe: serde_json::Value,
    /// Where the build's outputs are (a directory or a store URL), once known.
    pub output_location: Option<String>,
    pub manifest: Option<serde_json::Value>,
    pub region: String,
    pub account: String,
    pub tags: Tags,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One recorded state change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChange {
    /// `None` for the creation of the image.
    pub from: Option<ImageState>,
    pub to: ImageState,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Which images [`Store::list_images`] returns; every given field must match. DELETED
/// images are left out unless `state` is `Some(DELETED)` or `include_deleted`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFilter {
    pub name: Option<String>,
    pub version: Option<Version>,
    pub state: Option<ImageState>,
    /// Tags the image must all have: a key, and the value it must have (any value when
    /// `None`).
    pub tags: Vec<(String, Option<String>)>,
    /// Also list DELETED images (their records stay after a deletion).
    pub include_deleted: bool,
}

#[derive(sqlx::FromRow)]
struct ImageRow {
    arn: String,
    name: String,
    version: String,
    build: i64,
    state: String,
    reason: Option<String>,
    recipe: String,
    output_location: Option<String>,
    manifest: Option<String>,
    region: String,
    account: String,
    tags: String,
    created_at: String,
    updated_at: String,
}

const IMAGE_COLUMNS: &str = "arn, name, version, build, state, reason, recipe, output_location, \
                             manifest, region, account, tags, created_at, updated_at";

fn state_from_row(s: &str, what: &str) -> Result<ImageState> {
    s.parse().map_err(|detail| StoreError::Corrupt { what: what.to_owned(), detail })
}

impl ImageRow {
    fn into_image(self) -> Result<Image> {
        let what = format!("image {}", self.arn);
        Ok(Image {
            version: version_from_row(&self.version, &what)?,
            build: u32::try_from(self.build).map_err(|_| StoreError::Corrupt {
                what: what.clone(),
                detail: format!("build number {}", self.build),
            })?,
            state: state_from_row(&self.state, &what)?,
            recipe: json_from_text(&self.recipe, &what, "recipe")?,
            manifest: self.manifest.as_deref().map(|m| json_from_text(m, &what, "manifest")).transpose()?,
            tags: tags_from_json(&self.tags, &what)?,
            created_at: parse_ts(&self.created_at, &what)?,
            updated_at: parse_ts(&self.updated_at, &what)?,
            arn: self.arn,
            name: self.name,
            reason: self.reason,
            output_location: self.output_location,
            region: self.region,
            account: self.account,
        })
    }
}

/// Hands out the next build number of (name, version) in one statement: atomic on every
/// backend, and numbers are never reused.
const ALLOCATE_BUILD_SQL: &str = "INSERT INTO image_build_counters (name, version, last_build) \
     VALUES ($1, $2, 1) \
     ON CONFLICT (name, version) DO UPDATE SET last_build = image_build_counters.last_build + 1 \
     RETURNING last_build";

const INSERT_HISTORY_SQL: &str = "INSERT INTO image_state_history (image_id, from_state, to_state, reason, at) \
     VALUES ($1, $2, $3, $4, $5)";

fn build_from_counter(n: i64, name: &str, version: &Version) -> Result<u32> {
    u32::try_from(n).map_err(|_| StoreError::Corrupt {
        what: format!("build counter of {name} {version}"),
        detail: format!("{n} is not a valid build number"),
    })
}

impl Store {
    /// The next build number of image `name` `version` (1 for the first). Concurrent
    /// callers, in one process or many, never get the same number.
    pub async fn allocate_build(&self, name: &str, version: &Version) -> Result<u32> {
        let (n,): (i64,) = with_pool!(self, pool => {
            sqlx::query_as(ALLOCATE_BUILD_SQL)
                .bind(name)
                .bind(version.to_string())
                .fetch_one(pool)
                .await
                .map_err(db("allocate a build number"))?
        });
        build_from_counter(n, name, version)
    }

    /// Record a new build: the next build number, state PENDING, and the first history
    /// entry, in one transaction.
    pub async fn create_image(&self, new: &NewImage) -> Result<Image> {
        let at = now();
        let ts = fmt_ts(at);
        let version = new.version.to_string();
        let (n, arn) = with_pool!(self, pool => {
            let op = "record a new image";
            let mut tx = pool.begin().await.map_err(db(op))?;
            let (n,): (i64,) = sqlx::query_as(ALLOCATE_BUILD_SQL)
                .bind(&new.name)
                .bind(&version)
                .fetch_one(&mut *tx)
                .await
                .map_err(db(op))?;
            let build = build_from_counter(n, &new.name, &new.version)?;
            let arn = image_arn(&new.region, &new.account, &new.name, &new.version, build);
            let ids: Vec<(i64,)> = sqlx::query_as(
                "INSERT INTO images (arn, name, version, version_major, version_minor, version_patch, \
                 build, state, reason, recipe, output_location, manifest, region, account, tags, \
                 created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, NULL, NULL, $10, $11, $12, $13, $13) \
                 RETURNING id",
            )
            .bind(&arn)
            .bind(&new.name)
            .bind(&version)
            .bind(i64::from(new.version.major))
            .bind(i64::from(new.version.minor))
            .bind(i64::from(new.version.patch))
            .bind(n)
            .bind(Pending.as_str())
            .bind(new.recipe.to_string())
            .bind(&new.region)
            .bind(&new.account)
            .bind(tags_to_json(&new.tags))
            .bind(&ts)
            .fetch_all(&mut *tx)
            .await
            .map_err(db(op))?;
            let id = ids.first().map(|r| r.0).ok_or_else(|| StoreError::Corrupt {
                what: format!("image {arn}"),
                detail: "insert returned no id".into(),
            })?;
            sqlx::query(INSERT_HISTORY_SQL)
                .bind(id)
                .bind(None::<String>)
                .bind(Pending.as_str())
                .bind(None::<String>)
                .bind(&ts)
                .execute(&mut *tx)
                .await
                .map_err(db(op))?;
            tx.commit().await.map_err(db(op))?;
            (build, arn)
        });
        Ok(Image {
            arn,
            name: new.name.clone(),
            version: new.version,
            build: n,
            state: Pending,
            reason: None,
            recipe: new.recipe.clone(),
            output_location: None,
            manifest: None,
            region: new.region.clone(),
            account: new.account.clone(),
            tags: new.tags.clone(),
            created_at: at,
            updated_at: at,
        })
    }

    /// The image with this ARN, whatever its state.
    pub async fn get_image_by_arn(&self, arn: &str) -> Result<Image> {
        let sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE arn = $1");
        let row: Option<ImageRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(arn)
                .fetch_optional(pool)
                .await
                .map_err(db("read an image"))?
        });
        row.ok_or_else(|| StoreError::ImageNotFound { what: arn.to_owned() })?.into_image()
    }

    /// `NAME/VERSION/BUILD` in any state, or with `build` `None` the highest build of
    /// `NAME/VERSION` that is not DELETED.
    pub async fn get_image(&self, name: &str, version: &Version, build: Option<u32>) -> Result<Image> {
        let row: Option<ImageRow> = match build {
            Some(b) => {
                let sql = format!(
                    "SELECT {IMAGE_COLUMNS} FROM images WHERE name = $1 AND version = $2 AND build = $3"
                );
                with_pool!(self, pool => {
                    sqlx::query_as(&sql)
                        .bind(name)
                        .bind(version.to_string())
                        .bind(i64::from(b))
                        .fetch_optional(pool)
                        .await
                        .map_err(db("read an image"))?
                })
            }
            None => {
                let sql = format!(
                    "SELECT {IMAGE_COLUMNS} FROM images WHERE name = $1 AND version = $2 \
                     AND state <> $3 ORDER BY build DESC LIMIT 1"
                );
                with_pool!(self, pool => {
                    sqlx::query_as(&sql)
                        .bind(name)
                        .bind(version.to_string())
                        .bind(Deleted.as_str())
                        .fetch_optional(pool)
                        .await
                        .map_err(db("read an image"))?
                })
            }
        };
        row.ok_or_else(|| StoreError::ImageNotFound {
            what: match build {
                Some(b) => format!("{name}/{version}/{b}"),
                None => format!("{name}/{version} (no build that is not DELETED)"),
            },
        })?
        .into_image()
    }

    /// Images matching `filter`, ordered by name, version and build.
    pub async fn list_images(&self, filter: &ImageFilter) -> Result<Vec<Image>> {
        let mut conditions = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut cond = |column: &str, value: String, op: &str| {
            binds.push(value);
            conditions.push(format!("{column} {op} ${}", binds.len()));
        };
        if let Some(name) = &filter.name {
            cond("name", name.clone(), "=");
        }
        if let Some(version) = &filter.version {
            cond("version", version.to_string(), "=");
        }
        match filter.state {
            Some(state) => cond("state", state.as_str().to_owned(), "="),
            None if filter.include_deleted => {}
            None => cond("state", Deleted.as_str().to_owned(), "<>"),
        }
        if conditions.is_empty() {
            conditions.push("1 = 1".to_owned());
        }
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE {} \
             ORDER BY name, version_major, version_minor, version_patch, build",
            conditions.join(" AND ")
        );
        let rows: Vec<ImageRow> = with_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql);
            for b in &binds {
                q = q.bind(b);
            }
            q.fetch_all(pool).await.map_err(db("list images"))?
        });
        let mut images = Vec::with_capacity(rows.len());
        for row in rows {
            let image = row.into_image()?;
            let keep = filter.tags.iter().all(|(key, value)| match value {
                None => image.tags.contains_key(key),
                Some(value) => image.tags.get(key) == Some(value),
            });
            if keep {
                images.push(image);
            }
        }
        Ok(images)
    }

    /// Move the image to state `to`, recording the change (with `reason`) in its history.
    /// A change [`ImageState::next_states`] does not allow is refused with
    /// [`StoreError::InvalidTransition`] and changes nothing. Safe against concurrent
    /// transitions: the update only applies to the state it was validated against.
    pub async fn transition(&self, arn: &str, to: ImageState, reason: Option<&str>) -> Result<Image> {
        const ATTEMPTS: usize = 8;
        for _ in 0..ATTEMPTS {
            let current = self.get_image_by_arn(arn).await?;
            let from = current.state;
            if !from.can_become(to) {
                return Err(StoreError::InvalidTransition {
                    arn: arn.to_owned(),
                    from,
                    to,
                    allowed: from.next_states().to_vec(),
                });
            }
            let at = now();
            let ts = fmt_ts(at);
            let applied = with_pool!(self, pool => {
                let op = "change an image's state";
                let mut tx = pool.begin().await.map_err(db(op))?;
                // The write comes first in the transaction, so SQLite takes its write lock
                // (waiting on busy_timeout) before reading anything.
                let ids: Vec<(i64,)> = sqlx::query_as(
                    "UPDATE images SET state = $1, reason = COALESCE($2, reason), updated_at = $3 \
                     WHERE arn = $4 AND state = $5 RETURNING id",
                )
                .bind(to.as_str())
                .bind(reason)
                .bind(&ts)
                .bind(arn)
                .bind(from.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(db(op))?;
                match ids.first() {
                    None => {
                        tx.rollback().await.map_err(db(op))?;
                        false
                    }
                    Some((id,)) => {
                        sqlx::query(INSERT_HISTORY_SQL)
                            .bind(*id)
                            .bind(from.as_str())
                            .bind(to.as_str())
                            .bind(reason)
                            .bind(&ts)
                            .execute(&mut *tx)
                            .await
                            .map_err(db(op))?;
                        tx.commit().await.map_err(db(op))?;
                        true
                    }
                }
            });
            if applied {
                let mut image = current;
                image.state = to;
                if let Some(r) = reason {
                    image.reason = Some(r.to_owned());
                }
                image.updated_at = at;
                return Ok(image);
            }
            // Someone changed the state between our read and our update: validate again.
        }
        Err(StoreError::ConcurrentUpdate { what: format!("the state of image {arn}") })
    }

    /// Say why a PENDING image was created (a schedule's slot, fixes available...): the
    /// image's reason and its first history entry's. Returns whether the image was still
    /// PENDING (a build already under way keeps its own reasons).
    pub async fn set_creation_reason(&self, arn: &str, reason: &str) -> Result<bool> {
        let updated = with_pool!(self, pool => {
            let op = "record why an image was created";
            let mut tx = pool.begin().await.map_err(db(op))?;
            let ids: Vec<(i64,)> = sqlx::query_as(
                "UPDATE images SET reason = $1 WHERE arn = $2 AND state = $3 RETURNING id",
            )
            .bind(reason)
            .bind(arn)
            .bind(Pending.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(db(op))?;
            if let Some((id,)) = ids.first() {
                sqlx::query(
                    "UPDATE image_state_history SET reason = $1 \
                     WHERE image_id = $2 AND from_state IS NULL AND reason IS NULL",
                )
                .bind(reason)
                .bind(*id)
                .execute(&mut *tx)
                .await
                .map_err(db(op))?;
            }
            tx.commit().await.map_err(db(op))?;
            !ids.is_empty()
        });
        Ok(updated)
    }

    /// Every state change of the image, oldest first (the first is its creation).
    pub async fn image_history(&self, arn: &str) -> Result<Vec<StateChange>> {
        // Make "no such image" an error rather than an empty history.
        self.get_image_by_arn(arn).await?;
        let rows: Vec<(Option<String>, String, Option<String>, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT h.from_state, h.to_state, h.reason, h.at FROM image_state_history h \
                 JOIN images i ON i.id = h.image_id WHERE i.arn = $1 ORDER BY h.id",
            )
            .bind(arn)
            .fetch_all(pool)
            .await
            .map_err(db("read an image's state history"))?
        });
        let what = format!("state history of {arn}");
        rows.into_iter()
            .map(|(from, to, reason, at)| {
                Ok(StateChange {
                    from: from.as_deref().map(|f| state_from_row(f, &what)).transpose()?,
                    to: state_from_row(&to, &what)?,
                    reason,
                    at: parse_ts(&at, &what)?,
                })
            })
            .collect()
    }

    /// Record where the build's outputs are and its manifest.
    pub async fn set_manifest(
        &self,
        arn: &str,
        output_location: &str,
        manifest: &serde_json::Value,
    ) -> Result<()> {
        let done = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE images SET output_location = $1, manifest = $2, updated_at = $3 WHERE arn = $4",
            )
            .bind(output_location)
            .bind(manifest.to_string())
            .bind(fmt_ts(now()))
            .bind(arn)
            .execute(pool)
            .await
            .map_err(db("record an image's manifest"))?
            .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::ImageNotFound { what: arn.to_owned() });
        }
        Ok(())
    }

    /// Record where the image's output folder is, before there is a manifest: a build that
    /// fails still says where its logs and reports are.
    pub async fn set_output_location(&self, arn: &str, output_location: &str) -> Result<()> {
        let done = with_pool!(self, pool => {
            sqlx::query("UPDATE images SET output_location = $1, updated_at = $2 WHERE arn = $3")
                .bind(output_location)
                .bind(fmt_ts(now()))
                .bind(arn)
                .execute(pool)
                .await
                .map_err(db("record an image's output folder"))?
                .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::ImageNotFound { what: arn.to_owned() });
        }
        Ok(())
    }

    /// Replace the image's tags.
    pub async fn set_image_tags(&self, arn: &str, tags: &Tags) -> Result<()> {
        let done = with_pool!(self, pool => {
            sqlx::query("UPDATE images SET tags = $1, updated_at = $2 WHERE arn = $3")
                .bind(tags_to_json(tags))
                .bind(fmt_ts(now()))
                .bind(arn)
                .execute(pool)
                .await
                .map_err(db("change an image's tags"))?
                .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::ImageNotFound { what: arn.to_owned() });
        }
        Ok(())
    }

    /// Start-up recovery: every image whose build was running ([`ImageState::IN_PROGRESS`])
    /// becomes FAILED with `reason`, so nothing stays BUILDING forever. Returns their ARNs.
    /// Only for a process that knows no other process is building (the embedded default);
    /// with shared workers, recovery follows expired job leases instead.
    pub async fn fail_in_progress(&self, reason: &str) -> Result<Vec<String>> {
        let ts = fmt_ts(now());
        let failed = with_pool!(self, pool => {
            let op = "fail interrupted builds";
            let mut tx = pool.begin().await.map_err(db(op))?;
            let mut failed = Vec::new();
            for from in ImageState::IN_PROGRESS {
                let rows: Vec<(i64, String)> = sqlx::query_as(
                    "UPDATE images SET state = $1, reason = $2, updated_at = $3 WHERE state = $4 \
                     RETURNING id, arn",
                )
                .bind(Failed.as_str())
                .bind(reason)
                .bind(&ts)
                .bind(from.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(db(op))?;
                for (id, arn) in rows {
                    sqlx::query(INSERT_HISTORY_SQL)
                        .bind(id)
                        .bind(from.as_str())
                        .bind(Failed.as_str())
                        .bind(reason)
                        .bind(&ts)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(op))?;
                    failed.push(arn);
                }
            }
            tx.commit().await.map_err(db(op))?;
            failed
        });
        Ok(failed)
    }
}
