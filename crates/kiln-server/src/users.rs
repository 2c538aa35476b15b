//! Users of the API (`kiln admin`): a name, an account, one identity policy and an access key
//! whose secret is shown once and kept sealed.

use kiln_api::policy::Policy;

use crate::secrets::random_text;
use crate::{Server, ServerError};

const KEY_ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A new user's access key: the only time the secret is available in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUserKey {
    pub user_name: String,
    pub account: String,
    pub user_arn: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// A user as `kiln admin list-users` shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    pub name: String,
    pub account: String,
    pub arn: String,
    pub policy_name: String,
    pub access_key_ids: Vec<String>,
    pub created_at: String,
}

/// `arn:aws:iam::ACCOUNT:user/NAME`.
pub(crate) fn principal_arn(account: &str, name: &str) -> String {
    format!("arn:aws:iam::{account}:user/{name}")
}

/// IAM's user name rule: 1 to 64 of letters, digits and `+=,.@_-`.
fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

/// Create user `name` in `account` with the policy document `policy` (named `policy_name`),
/// and its access key.
pub async fn create_user(
    server: &Server,
    name: &str,
    account: &str,
    policy_name: &str,
    policy: &str,
) -> Result<NewUserKey, ServerError> {
    if !valid_user_name(name) {
        return Err(ServerError::Invalid(format!(
            "`{name}` is not a valid user name: 1 to 64 letters, digits or +=,.@_-"
        )));
    }
    if !kiln_store::is_account_id(account) {
        return Err(ServerError::Invalid(format!(
            "`{account}` is not an account id (twelve digits, such as 123456789012)"
        )));
    }
    Policy::parse(policy_name, policy)?;
    // A collision of 16 random base-32 characters is not expected; retry once anyway.
    let mut attempt = 0;
    loop {
        let access_key_id = format!("AKIA{}", random_text(KEY_ID_ALPHABET, 16));
        let secret_access_key = random_text(SECRET_ALPHABET, 40);
        let sealed = server.inner.secrets.seal(&access_key_id, &secret_access_key)?;
        match server
            .store()
            .create_api_user(name, account, policy_name, policy, &access_key_id, &sealed)
            .await
        {
            Ok(_) => {
                return Ok(NewUserKey {
                    user_name: name.to_owned(),
                    account: account.to_owned(),
                    user_arn: principal_arn(account, name),
                    access_key_id,
                    secret_access_key,
                });
            }
            Err(kiln_store::StoreError::AccessKeyExists { .. }) if attempt == 0 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Every user.
pub async fn list_users(server: &Server) -> Result<Vec<UserSummary>, ServerError> {
    let fmt = time::format_description::well_known::Rfc3339;
    Ok(server
        .store()
        .list_api_users()
        .await?
        .into_iter()
        .map(|u| UserSummary {
            arn: principal_arn(&u.account, &u.name),
            created_at: u.created_at.format(&fmt).unwrap_or_default(),
            name: u.name,
            account: u.account,
            policy_name: u.policy_name,
            access_key_ids: u.access_key_ids,
        })
        .collect())
}

/// Delete a user and its access keys; an unknown user is an error. A server in another
/// process stops accepting the keys within [`crate::CREDENTIAL_TTL`].
pub async fn delete_user(server: &Server, name: &str) -> Result<(), ServerError> {
    let deleted = server.store().delete_api_user(name).await?;
    server.inner.credentials.forget_user(name);
    if deleted {
        Ok(())
    } else {
        Err(ServerError::Invalid(format!("no user named {name}; `kiln admin list-users` shows them")))
    }
}
