//! The one error type of the store: each variant names what was wrong and what to do.

use std::path::PathBuf;

use crate::images::ImageState;
use crate::{Version, VersionError};

/// What went wrong in a store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The location given to [`crate::Store::open`] is not a database kiln can use.
    #[error(
        "unsupported state database location {location:?}: {reason}; give a file path or a sqlite://PATH URL"
    )]
    UnsupportedLocation { location: String, reason: String },

    /// The directory that should hold the database could not be created.
    #[error(
        "cannot create the state directory {}: {source}; check permissions or set KILN_HOME elsewhere",
        path.display()
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The database could not be opened or configured.
    #[error(
        "cannot open the state database {location}: {source}; check that the file is writable and not a different kind of file"
    )]
    Open {
        location: String,
        #[source]
        source: sqlx::Error,
    },

    /// The schema migrations could not be applied.
    #[error(
        "cannot bring the state database {location} to the current schema: {source}; it may have been written by a newer kiln"
    )]
    Migrate {
        location: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// A query failed at the database level.
    #[error("state database error while trying to {op}: {source}")]
    Database {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// A stored row does not decode (hand-edited or written by an incompatible kiln).
    #[error("corrupt state: {what}: {detail}")]
    Corrupt { what: String, detail: String },

    /// A version string is not `MAJOR.MINOR.PATCH`.
    #[error(
        "invalid version {input:?}: {reason}; versions are MAJOR.MINOR.PATCH with non-negative integers, such as 1.0.0"
    )]
    InvalidVersion { input: String, reason: String },

    /// A version filter is not one of Image Builder's forms.
    #[error(
        "invalid version filter {input:?}: {reason}; use an exact version (1.2.3) or a wildcard (1.2.x, 1.x.x or x.x.x)"
    )]
    InvalidVersionFilter { input: String, reason: String },

    /// A component with this name and version exists already.
    #[error(
        "component {name} version {version} already exists; components are immutable, create a new version instead"
    )]
    ComponentExists { name: String, version: Version },

    /// No component with this name has a version matching the filter.
    #[error("{}", component_not_found(name, filter, available))]
    ComponentNotFound {
        name: String,
        filter: String,
        /// The versions of `name` that do exist, lowest first (empty: no such component).
        available: Vec<Version>,
    },

    /// A recipe with this name and version exists already.
    #[error(
        "image recipe {name} version {version} already exists; recipes are immutable, create a new version instead"
    )]
    RecipeExists { name: String, version: Version },

    /// No recipe with this name and version.
    #[error("image recipe {name} version {version} not found; `kiln` lists recipes with their versions")]
    RecipeNotFound { name: String, version: Version },

    /// A value given to the store is not one it accepts (a malformed launch permission).
    #[error("invalid {what}: {detail}")]
    InvalidInput { what: String, detail: String },

    /// No image matches.
    #[error("image {what} not found; `kiln image list` shows the images that exist")]
    ImageNotFound { what: String },

    /// The image is not in a state from which the requested state can be reached.
    #[error("{}", invalid_transition(arn, *from, *to, allowed))]
    InvalidTransition {
        arn: String,
        from: ImageState,
        to: ImageState,
        /// The states reachable from `from`.
        allowed: Vec<ImageState>,
    },

    /// The record kept changing under concurrent updates; the operation gave up.
    #[error("{what} kept changing while kiln tried to update it; try again")]
    ConcurrentUpdate { what: String },

    /// No job with this id.
    #[error("job {id} not found")]
    JobNotFound { id: i64 },

    /// The worker no longer holds the job (its lease expired and another worker took it,
    /// or it was finished).
    #[error(
        "worker {worker_id} no longer holds job {id} (lease expired and re-claimed, or the job finished); stop working on it"
    )]
    LeaseLost { id: i64, worker_id: String },

    /// A job kind was empty, or a lease (of a job, or the term of a role) too long to represent.
    #[error("invalid job request: {reason}")]
    InvalidJob { reason: String },

    /// An API resource with this ARN exists already.
    #[error("{arn} already exists")]
    ApiResourceExists { arn: String },

    /// An API user with this name exists already.
    #[error("user {name} already exists; delete it first or choose another name")]
    ApiUserExists { name: String },

    /// An access key id was issued twice (a random collision: try again).
    #[error("access key {id} exists already; try again")]
    AccessKeyExists { id: String },

    /// No layer with this key in the cache index.
    #[error("layer {key} is not in the cache index")]
    LayerNotFound { key: String },
}

impl From<VersionError> for StoreError {
    /// A version or filter given to the store that does not parse (user input); text read
    /// back from the database maps to [`StoreError::Corrupt`] instead.
    fn from(e: VersionError) -> StoreError {
        let (input, reason) = (e.text().to_owned(), e.reason().to_owned());
        match e {
            VersionError::Version { .. } => StoreError::InvalidVersion { input, reason },
            VersionError::Filter { .. } => StoreError::InvalidVersionFilter { input, reason },
        }
    }
}

fn component_not_found(name: &str, filter: &str, available: &[Version]) -> String {
    if available.is_empty() {
        format!("component {name} not found (no version of it exists); create it first, or check the name")
    } else {
        let list: Vec<String> = available.iter().map(Version::to_string).collect();
        format!(
            "no version of component {name} matches {filter} (versions that exist: {}); change the version in the recipe or create a matching version",
            list.join(", ")
        )
    }
}

fn invalid_transition(arn: &str, from: ImageState, to: ImageState, allowed: &[ImageState]) -> String {
    if allowed.is_empty() {
        format!("image {arn} is {from}, a final state; it cannot become {to}")
    } else {
        let list: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        format!(
            "image {arn} is {from} and cannot become {to}; from {from} it can only become {}",
            list.join(", ")
        )
    }
}

/// Attach the operation name to a database error.
pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { op, source }
}

/// Shorthand for this crate's results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VersionFilter;

    #[test]
    fn version_errors_map_to_the_store_variants() {
        let e: StoreError = "1.2".parse::<Version>().unwrap_err().into();
        assert!(matches!(&e, StoreError::InvalidVersion { input, .. } if input == "1.2"), "{e:?}");
        assert!(e.to_string().contains("it has 2 parts, not 3"), "{e}");
        let e: StoreError = "1.x.3".parse::<VersionFilter>().unwrap_err().into();
        assert!(matches!(&e, StoreError::InvalidVersionFilter { input, .. } if input == "1.x.3"), "{e:?}");
        assert!(e.to_string().contains("`x` may only follow fixed parts"), "{e}");
    }
}
