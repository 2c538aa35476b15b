//! Roles that one server process holds for the whole deployment at a time (the scheduler, the
//! feed follower), with a term that the holder renews and that others wait out. Built on one
//! conditional upsert, so it works the same on SQLite and PostgreSQL and needs no coordination
//! service: a holder that dies simply stops renewing.

use std::time::Duration;

use crate::error::{Result, StoreError, db};
use crate::{Store, fmt_ts, now, with_pool};

impl Store {
    /// Takes or renews `role` for `holder` until `term` from now. True when `holder` holds it
    /// now: it was free, its term had run out, or `holder` already held it.
    pub async fn hold_role(&self, role: &str, holder: &str, term: Duration) -> Result<bool> {
        let at = now();
        let until = time::Duration::try_from(term)
            .ok()
            .and_then(|d| at.checked_add(d))
            .ok_or_else(|| StoreError::InvalidJob { reason: format!("a term of {term:?} is too long") })?;
        let taken = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO leadership (role, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE leadership.holder = excluded.holder OR leadership.expires_at < $4",
            )
            .bind(role)
            .bind(holder)
            .bind(fmt_ts(until))
            .bind(fmt_ts(at))
            .execute(pool)
            .await
            .map_err(db("take a role"))?
            .rows_affected()
        });
        Ok(taken == 1)
    }

    /// Gives `role` up if `holder` holds it (a clean shutdown), so another process need not
    /// wait out the term.
    pub async fn release_role(&self, role: &str, holder: &str) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM leadership WHERE role = $1 AND holder = $2")
                .bind(role)
                .bind(holder)
                .execute(pool)
                .await
                .map_err(db("give up a role"))?
        });
        Ok(())
    }
}
