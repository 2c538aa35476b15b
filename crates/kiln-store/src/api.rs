//! What the API server keeps: users with their policy and sealed access keys, the resources
//! created through the API (as opaque JSON bodies), client tokens of idempotent calls, and
//! executions (of a pipeline, or of `CreateImage`). The store does not know what a policy or a body says, nor how a
//! secret is sealed.

use time::OffsetDateTime;

use crate::error::{Result, StoreError, db};
use crate::{
    Store, Tags, fmt_ts, is_unique_violation, json_from_text, now, parse_ts, tags_from_json, tags_to_json,
    with_pool,
};

/// A user of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUser {
    pub name: String,
    pub account: String,
    /// The name its policy is known by in decisions.
    pub policy_name: String,
    /// The policy document as given.
    pub policy: String,
    pub created_at: OffsetDateTime,
    /// Its access key ids.
    pub access_key_ids: Vec<String>,
}

/// An access key and the user it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCredential {
    pub access_key_id: String,
    /// The secret, sealed by the caller of [`Store::create_api_user`].
    pub secret_sealed: String,
    pub user: ApiUser,
}

/// A resource created through the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResource {
    pub arn: String,
    /// `component`, `image-recipe`, `infrastructure-configuration`, ...
    pub kind: String,
    pub name: String,
    pub version: Option<String>,
    pub account: String,
    /// What Get* answers with (the store does not look inside).
    pub body: serde_json::Value,
    pub tags: Tags,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// The recorded outcome of a call with a client token.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTokenRecord {
    pub request_hash: String,
    pub response: serde_json::Value,
}

/// An execution started through the API: the image it builds and the job building it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiExecution {
    pub image_arn: String,
    /// The pipeline it ran; `None` for an image created without one (`CreateImage`).
    pub pipeline_arn: Option<String>,
    pub job_id: i64,
    /// What the execution was started with (recipe, configurations), opaque here.
    pub snapshot: serde_json::Value,
    pub created_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct ResourceRow {
    arn: String,
    kind: String,
    name: String,
    version: Option<String>,
    account: String,
    body: String,
    tags: String,
    created_at: String,
    updated_at: String,
}

impl ResourceRow {
    fn into_resource(self) -> Result<ApiResource> {
        let what = self.arn.clone();
        Ok(ApiResource {
            body: json_from_text(&self.body, &what, "body")?,
            tags: tags_from_json(&self.tags, &what)?,
            created_at: parse_ts(&self.created_at, &what)?,
            updated_at: parse_ts(&self.updated_at, &what)?,
            arn: self.arn,
            kind: self.kind,
            name: self.name,
            version: self.version,
            account: self.account,
        })
    }
}

const RESOURCE_COLUMNS: &str = "arn, kind, name, version, account, body, tags, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct UserRow {
    name: String,
    account: String,
    policy_name: String,
    policy: String,
    created_at: String,
}

impl UserRow {
    fn into_user(self, access_key_ids: Vec<String>) -> Result<ApiUser> {
        Ok(ApiUser {
            created_at: parse_ts(&self.created_at, &format!("user {}", self.name))?,
            name: self.name,
            account: self.account,
            policy_name: self.policy_name,
            policy: self.policy,
            access_key_ids,
        })
    }
}

impl Store {
    /// Record a user with its policy and one access key, in one transaction.
    pub async fn create_api_user(
        &self,
        name: &str,
        account: &str,
        policy_name: &str,
        policy: &str,
        access_key_id: &str,
        secret_sealed: &str,
    ) -> Result<ApiUser> {
        let at = now();
        let ts = fmt_ts(at);
        let result: std::result::Result<(), (bool, sqlx::Error)> = with_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await.map_err(|e| (false, e))?;
                sqlx::query(
                    "INSERT INTO api_users (name, account, policy_name, policy, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(name)
                .bind(account)
                .bind(policy_name)
                .bind(policy)
                .bind(&ts)
                .execute(&mut *tx)
                .await
                .map_err(|e| (false, e))?;
                sqlx::query(
                    "INSERT INTO api_access_keys (access_key_id, user_name, secret_sealed, created_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(access_key_id)
                .bind(name)
                .bind(secret_sealed)
                .bind(&ts)
                .execute(&mut *tx)
                .await
                .map_err(|e| (true, e))?;
                tx.commit().await.map_err(|e| (true, e))
            }
            .await
        });
        match result {
            Ok(()) => Ok(ApiUser {
                name: name.to_owned(),
                account: account.to_owned(),
                policy_name: policy_name.to_owned(),
                policy: policy.to_owned(),
                created_at: at,
                access_key_ids: vec![access_key_id.to_owned()],
            }),
            Err((false, e)) if is_unique_violation(&e) => {
                Err(StoreError::ApiUserExists { name: name.to_owned() })
            }
            Err((true, e)) if is_unique_violation(&e) => {
                Err(StoreError::AccessKeyExists { id: access_key_id.to_owned() })
            }
            Err((_, e)) => Err(db("create a user")(e)),
        }
    }

    /// Every user, by name, with its access key ids.
    pub async fn list_api_users(&self) -> Result<Vec<ApiUser>> {
        let (users, keys): (Vec<UserRow>, Vec<(String, String)>) = with_pool!(self, pool => {
            let users = sqlx::query_as(
                "SELECT name, account, policy_name, policy, created_at FROM api_users ORDER BY name",
            )
            .fetch_all(pool)
            .await
            .map_err(db("list users"))?;
            let keys = sqlx::query_as(
                "SELECT user_name, access_key_id FROM api_access_keys ORDER BY created_at, access_key_id",
            )
            .fetch_all(pool)
            .await
            .map_err(db("list access keys"))?;
            (users, keys)
        });
        users
            .into_iter()
            .map(|u| {
                let ids = keys.iter().filter(|(n, _)| *n == u.name).map(|(_, k)| k.clone()).collect();
                u.into_user(ids)
            })
            .collect()
    }

    /// Delete a user and its keys. Returns whether it existed.
    pub async fn delete_api_user(&self, name: &str) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query("DELETE FROM api_users WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await
                .map_err(db("delete a user"))?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// The access key `access_key_id` and its user, if it exists.
    pub async fn api_credential(&self, access_key_id: &str) -> Result<Option<ApiCredential>> {
        let row: Option<(String, String, String, String, String, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT k.secret_sealed, u.name, u.account, u.policy_name, u.policy, u.created_at \
                 FROM api_access_keys k JOIN api_users u ON u.name = k.user_name \
                 WHERE k.access_key_id = $1",
            )
            .bind(access_key_id)
            .fetch_optional(pool)
            .await
            .map_err(db("read an access key"))?
        });
        let Some((secret_sealed, name, account, policy_name, policy, created_at)) = row else {
            return Ok(None);
        };
        let user = UserRow { name, account, policy_name, policy, created_at }
            .into_user(vec![access_key_id.to_owned()])?;
        Ok(Some(ApiCredential { access_key_id: access_key_id.to_owned(), secret_sealed, user }))
    }

    /// Record a new API resource; an existing ARN is [`StoreError::ApiResourceExists`].
    pub async fn create_api_resource(&self, r: &ApiResource) -> Result<()> {
        let result = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO api_resources (arn, kind, name, version, account, body, tags, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&r.arn)
            .bind(&r.kind)
            .bind(&r.name)
            .bind(&r.version)
            .bind(&r.account)
            .bind(r.body.to_string())
            .bind(tags_to_json(&r.tags))
            .bind(fmt_ts(r.created_at))
            .bind(fmt_ts(r.updated_at))
            .execute(pool)
            .await
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::ApiResourceExists { arn: r.arn.clone() }),
            Err(e) => Err(db("create a resource")(e)),
        }
    }

    /// Replace a resource's body and tags. Returns whether it existed.
    pub async fn update_api_resource(
        &self,
        arn: &str,
        body: &serde_json::Value,
        tags: &Tags,
    ) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query("UPDATE api_resources SET body = $1, tags = $2, updated_at = $3 WHERE arn = $4")
                .bind(body.to_string())
                .bind(tags_to_json(tags))
                .bind(fmt_ts(now()))
                .bind(arn)
                .execute(pool)
                .await
                .map_err(db("update a resource"))?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Replace a resource's body and tags if it has not been updated since `seen` (its
    /// `updated_at` when read), so a background writer does not undo a concurrent update.
    /// Returns whether it was replaced (false: changed or gone; read it again).
    pub async fn update_api_resource_if_unchanged(
        &self,
        arn: &str,
        seen: OffsetDateTime,
        body: &serde_json::Value,
        tags: &Tags,
    ) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE api_resources SET body = $1, tags = $2, updated_at = $3 WHERE arn = $4 AND updated_at = $5",
            )
            .bind(body.to_string())
            .bind(tags_to_json(tags))
            .bind(fmt_ts(now()))
            .bind(arn)
            .bind(fmt_ts(seen))
            .execute(pool)
            .await
            .map_err(db("update a resource"))?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// The resource with this ARN.
    pub async fn get_api_resource(&self, arn: &str) -> Result<Option<ApiResource>> {
        let sql = format!("SELECT {RESOURCE_COLUMNS} FROM api_resources WHERE arn = $1");
        let row: Option<ResourceRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(arn).fetch_optional(pool).await.map_err(db("read a resource"))?
        });
        row.map(ResourceRow::into_resource).transpose()
    }

    /// The resources of `kind` (of `account` when given), by name then creation.
    pub async fn list_api_resources(&self, kind: &str, account: Option<&str>) -> Result<Vec<ApiResource>> {
        let filter = if account.is_some() { " AND account = $2" } else { "" };
        let sql = format!(
            "SELECT {RESOURCE_COLUMNS} FROM api_resources WHERE kind = $1{filter} ORDER BY name, created_at, arn"
        );
        let rows: Vec<ResourceRow> = with_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql).bind(kind);
            if let Some(account) = account {
                q = q.bind(account);
            }
            q.fetch_all(pool).await.map_err(db("list resources"))?
        });
        rows.into_iter().map(ResourceRow::into_resource).collect()
    }

    /// Delete a resource. Returns whether it existed.
    pub async fn delete_api_resource(&self, arn: &str) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query("DELETE FROM api_resources WHERE arn = $1")
                .bind(arn)
                .execute(pool)
                .await
                .map_err(db("delete a resource"))?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// What a call with this client token got before, if anything.
    pub async fn client_token(
        &self,
        account: &str,
        operation: &str,
        token: &str,
    ) -> Result<Option<ClientTokenRecord>> {
        let row: Option<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT request_hash, response FROM api_client_tokens \
                 WHERE account = $1 AND operation = $2 AND client_token = $3",
            )
            .bind(account)
            .bind(operation)
            .bind(token)
            .fetch_optional(pool)
            .await
            .map_err(db("read a client token"))?
        });
        row.map(|(request_hash, response)| {
            Ok(ClientTokenRecord {
                request_hash,
                response: json_from_text(&response, &format!("client token {token}"), "response")?,
            })
        })
        .transpose()
    }

    /// Remember a call's response under its client token. A token recorded meanwhile by a
    /// concurrent call is kept (first writer wins) and returned.
    pub async fn record_client_token(
        &self,
        account: &str,
        operation: &str,
        token: &str,
        record: &ClientTokenRecord,
    ) -> Result<ClientTokenRecord> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO api_client_tokens (account, operation, client_token, request_hash, response, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account, operation, client_token) DO NOTHING",
            )
            .bind(account)
            .bind(operation)
            .bind(token)
            .bind(&record.request_hash)
            .bind(record.response.to_string())
            .bind(fmt_ts(now()))
            .execute(pool)
            .await
            .map_err(db("record a client token"))?
        });
        Ok(self.client_token(account, operation, token).await?.unwrap_or_else(|| record.clone()))
    }

    /// Record that `image_arn` is built by job `job_id` for `pipeline_arn` (`None`: an image
    /// created without a pipeline).
    pub async fn record_execution(
        &self,
        image_arn: &str,
        pipeline_arn: Option<&str>,
        job_id: i64,
        snapshot: &serde_json::Value,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO api_executions (image_arn, pipeline_arn, job_id, snapshot, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(image_arn)
            .bind(pipeline_arn)
            .bind(job_id)
            .bind(snapshot.to_string())
            .bind(fmt_ts(now()))
            .execute(pool)
            .await
            .map_err(db("record an execution"))?
        });
        Ok(())
    }

    /// The execution that builds `image_arn`, if the API started it.
    pub async fn execution_of(&self, image_arn: &str) -> Result<Option<ApiExecution>> {
        let rows = self.executions("image_arn", image_arn).await?;
        Ok(rows.into_iter().next())
    }

    /// The executions of a pipeline, oldest first.
    pub async fn pipeline_executions(&self, pipeline_arn: &str) -> Result<Vec<ApiExecution>> {
        self.executions("pipeline_arn", pipeline_arn).await
    }

    async fn executions(&self, column: &'static str, value: &str) -> Result<Vec<ApiExecution>> {
        let sql = format!(
            "SELECT image_arn, pipeline_arn, job_id, snapshot, created_at FROM api_executions \
             WHERE {column} = $1 ORDER BY created_at, image_arn"
        );
        let rows: Vec<(String, Option<String>, i64, String, String)> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(value).fetch_all(pool).await.map_err(db("read executions"))?
        });
        rows.into_iter()
            .map(|(image_arn, pipeline_arn, job_id, snapshot, created_at)| {
                Ok(ApiExecution {
                    snapshot: json_from_text(&snapshot, &image_arn, "snapshot")?,
                    created_at: parse_ts(&created_at, &image_arn)?,
                    image_arn,
                    pipeline_arn,
                    job_id,
                })
            })
            .collect()
    }
}
