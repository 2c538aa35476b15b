//! kiln's resources, with EC2 Image Builder's names and camelCase fields.
//!
//! This crate owns the shapes a user writes — the resource file `kiln build -f` reads
//! (components, an image recipe, an infrastructure and a distribution configuration), semantic
//! versions with Image Builder's `x` wildcards, ARNs, lifecycle policies and pipeline schedules
//! (AWS cron expressions) — and their validation, with every
//! error pointing at `FILE:LINE:COLUMN`. The same shapes are what the API will accept later.
//! It must not know how a build runs, where state is kept or how disks are made: it describes,
//! it does not do. Fields Image Builder has no equivalent for are kiln extensions, named as
//! such in their documentation.

pub mod arn;
pub mod lifecycle;
pub mod resource;
pub mod schedule;
pub mod template;
pub mod version;

pub use arn::Arn;
pub use resource::{
    AmiDistributionConfiguration, BuilderKind, ComplianceConfiguration, ComplianceException, ComponentConfig,
    ComponentParameter, ComponentResource, DiskLayoutSpec, Distribution, DistributionConfiguration,
    ImageRecipe, ImageScanningConfiguration, InfrastructureConfiguration, LaunchPermissionConfiguration,
    NetworkPolicy, PartitionSpec, ResourceFile, ScanIgnoreRule, diagnostic_at, is_account_id,
    load_resource_file, parse_resource_file,
};
pub use version::{MAX_VERSION_PART, SemVer, VersionError, VersionFilter};

/// The account that owns kiln's built-in resources (managed parent images, built-in components).
pub const KILN_ACCOUNT: &str = "kiln";
/// The account of local resources in the embedded default.
pub const LOCAL_ACCOUNT: &str = "000000000000";
/// The region of the embedded default.
pub const LOCAL_REGION: &str = "local";
