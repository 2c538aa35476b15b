//! Who may use an image besides its owner (launch permissions: account ids or `all`), and the
//! name an image has in each region of its distribution.

use crate::error::{Result, StoreError, db};
use crate::{Store, fmt_ts, now, with_pool};

/// The launch permission that makes an image public (Image Builder's `userGroups: [all]`).
pub const ALL_ACCOUNTS: &str = "all";

/// Whether `principal` is an account id (twelve digits, as AWS's) or [`ALL_ACCOUNTS`].
pub fn is_valid_principal(principal: &str) -> bool {
    principal == ALL_ACCOUNTS || is_account_id(principal)
}

/// Whether `s` is an account id: twelve ASCII digits.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `account` may launch or pull an image owned by `owner` with launch permissions
/// `permissions`: the owner always may; others when named or when the image is public.
pub fn may_use(owner: &str, permissions: &[String], account: &str) -> bool {
    account == owner || permissions.iter().any(|p| p == account || p == ALL_ACCOUNTS)
}

impl Store {
    /// Grant launch permission on the image to each of `principals` (account ids or
    /// [`ALL_ACCOUNTS`]). Granting again changes nothing.
    pub async fn add_launch_permissions(&self, image_arn: &str, principals: &[String]) -> Result<()> {
        check_principals(principals)?;
        self.get_image_by_arn(image_arn).await?;
        let ts = fmt_ts(now());
        with_pool!(self, pool => {
            let op = "grant launch permissions";
            let mut tx = pool.begin().await.map_err(db(op))?;
            for p in principals {
                sqlx::query(
                    "INSERT INTO image_launch_permissions (image_arn, principal, granted_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (image_arn, principal) DO NOTHING",
                )
                .bind(image_arn)
                .bind(p)
                .bind(&ts)
                .execute(&mut *tx)
                .await
                .map_err(db(op))?;
            }
            tx.commit().await.map_err(db(op))?;
        });
        Ok(())
    }

    /// Withdraw launch permission from each of `principals`; returns how many were granted.
    pub async fn remove_launch_permissions(&self, image_arn: &str, principals: &[String]) -> Result<u64> {
        check_principals(principals)?;
        self.get_image_by_arn(image_arn).await?;
        let removed = with_pool!(self, pool => {
            let op = "withdraw launch permissions";
            let mut tx = pool.begin().await.map_err(db(op))?;
            let mut removed = 0;
            for p in principals {
                removed += sqlx::query(
                    "DELETE FROM image_launch_permissions WHERE image_arn = $1 AND principal = $2",
                )
                .bind(image_arn)
                .bind(p)
                .execute(&mut *tx)
                .await
                .map_err(db(op))?
                .rows_affected();
            }
            tx.commit().await.map_err(db(op))?;
            removed
        });
        Ok(removed)
    }

    /// The image's launch permissions, sorted (`all` sorts after account ids).
    pub async fn launch_permissions(&self, image_arn: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT principal FROM image_launch_permissions WHERE image_arn = $1 ORDER BY principal",
            )
            .bind(image_arn)
            .fetch_all(pool)
            .await
            .map_err(db("read launch permissions"))?
        });
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Record the name of the image in `region` (replacing an earlier one).
    pub async fn set_image_region_name(&self, image_arn: &str, region: &str, name: &str) -> Result<()> {
        let done = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO image_region_names (image_arn, region, name) \
                 SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM images WHERE arn = $1) \
                 ON CONFLICT (image_arn, region) DO UPDATE SET name = excluded.name",
            )
            .bind(image_arn)
            .bind(region)
            .bind(name)
            .execute(pool)
            .await
            .map_err(db("record an image's name in a region"))?
            .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::ImageNotFound { what: image_arn.to_owned() });
        }
        Ok(())
    }

    /// The image's name per region: `(region, name)` by region.
    pub async fn image_region_names(&self, image_arn: &str) -> Result<Vec<(String, String)>> {
        with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT region, name FROM image_region_names WHERE image_arn = $1 ORDER BY region",
            )
            .bind(image_arn)
            .fetch_all(pool)
            .await
            .map_err(db("read an image's names"))
        })
    }
}

fn check_principals(principals: &[String]) -> Result<()> {
    match principals.iter().find(|p| !is_valid_principal(p)) {
        Some(bad) => Err(StoreError::InvalidInput {
            what: "launch permission".into(),
            detail: format!("`{bad}` is neither a 12-digit account id nor `{ALL_ACCOUNTS}`"),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_named_accounts_and_public_images() {
        let owner = "000000000000";
        let shared = vec!["111111111111".to_string()];
        assert!(may_use(owner, &[], owner));
        assert!(!may_use(owner, &[], "111111111111"));
        assert!(may_use(owner, &shared, "111111111111"));
        assert!(!may_use(owner, &shared, "222222222222"));
        assert!(may_use(owner, &[ALL_ACCOUNTS.into()], "222222222222"));
        assert!(is_valid_principal("all") && is_valid_principal("123456789012"));
        assert!(!is_valid_principal("12345") && !is_valid_principal("12345678901x"));
    }
}
