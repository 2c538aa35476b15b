//! The index of the content-addressed layer cache: which layer keys exist, where their
//! content is, how big it is and when a build last used it (for `kiln cache prune`). The
//! store keeps the index only; the layer content is the cache's business.

use time::OffsetDateTime;

use crate::error::{Result, StoreError, db};
use crate::{Store, fmt_ts, now, parse_ts, with_pool};

/// One cached layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The cache key (a digest of everything that can change the layer).
    pub key: String,
    /// Where the layer's content is.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    pub created_at: OffsetDateTime,
    pub last_used_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct LayerRow {
    layer_key: String,
    path: String,
    size: i64,
    created_at: String,
    last_used_at: String,
}

impl LayerRow {
    fn into_layer(self) -> Result<Layer> {
        let what = format!("layer {}", self.layer_key);
        Ok(Layer {
            size: u64::try_from(self.size).map_err(|_| StoreError::Corrupt {
                what: what.clone(),
                detail: format!("size {}", self.size),
            })?,
            created_at: parse_ts(&self.created_at, &what)?,
            last_used_at: parse_ts(&self.last_used_at, &what)?,
            key: self.layer_key,
            path: self.path,
        })
    }
}

const LAYER_COLUMNS: &str = "layer_key, path, size, created_at, last_used_at";

impl Store {
    /// Record a layer (or, for a key recorded already, its new path and size), used now.
    pub async fn put_layer(&self, key: &str, path: &str, size: u64) -> Result<Layer> {
        let size_i = i64::try_from(size).map_err(|_| StoreError::Corrupt {
            what: format!("layer {key}"),
            detail: format!("size {size} does not fit the index"),
        })?;
        let ts = fmt_ts(now());
        let sql = format!(
            "INSERT INTO layers (layer_key, path, size, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (layer_key) DO UPDATE SET path = $2, size = $3, last_used_at = $4 \
             RETURNING {LAYER_COLUMNS}"
        );
        let rows: Vec<LayerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(key)
                .bind(path)
                .bind(size_i)
                .bind(&ts)
                .fetch_all(pool)
                .await
                .map_err(db("record a cache layer"))?
        });
        rows.into_iter().next().ok_or_else(|| StoreError::LayerNotFound { key: key.to_owned() })?.into_layer()
    }

    /// The layer recorded under `key`, if any.
    pub async fn get_layer(&self, key: &str) -> Result<Option<Layer>> {
        let sql = format!("SELECT {LAYER_COLUMNS} FROM layers WHERE layer_key = $1");
        let row: Option<LayerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(db("read a cache layer"))?
        });
        row.map(LayerRow::into_layer).transpose()
    }

    /// Mark the layer as used now (a build reused it).
    pub async fn touch_layer(&self, key: &str) -> Result<()> {
        let done = with_pool!(self, pool => {
            sqlx::query("UPDATE layers SET last_used_at = $1 WHERE layer_key = $2")
                .bind(fmt_ts(now()))
                .bind(key)
                .execute(pool)
                .await
                .map_err(db("mark a cache layer used"))?
                .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::LayerNotFound { key: key.to_owned() });
        }
        Ok(())
    }

    /// Every layer, least recently used first.
    pub async fn list_layers(&self) -> Result<Vec<Layer>> {
        let sql = format!("SELECT {LAYER_COLUMNS} FROM layers ORDER BY last_used_at, layer_key");
        let rows: Vec<LayerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .fetch_all(pool)
                .await
                .map_err(db("list cache layers"))?
        });
        rows.into_iter().map(LayerRow::into_layer).collect()
    }

    /// Layers not used since `cutoff` (last used strictly before it), least recently used
    /// first: the candidates for pruning.
    pub async fn list_layers_unused_since(&self, cutoff: OffsetDateTime) -> Result<Vec<Layer>> {
        let sql = format!(
            "SELECT {LAYER_COLUMNS} FROM layers WHERE last_used_at < $1 ORDER BY last_used_at, layer_key"
        );
        let rows: Vec<LayerRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(fmt_ts(cutoff))
                .fetch_all(pool)
                .await
                .map_err(db("list unused cache layers"))?
        });
        rows.into_iter().map(LayerRow::into_layer).collect()
    }

    /// Forget a layer. Returns whether it was recorded.
    pub async fn remove_layer(&self, key: &str) -> Result<bool> {
        let done = with_pool!(self, pool => {
            sqlx::query("DELETE FROM layers WHERE layer_key = $1")
                .bind(key)
                .execute(pool)
                .await
                .map_err(db("remove a cache layer"))?
                .rows_affected()
        });
        Ok(done > 0)
    }
}
