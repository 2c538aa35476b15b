//! Vulnerability scanning and SBOMs for images.
//!
//! kiln-scan owns what is *in* an image and what is known to be wrong with it: the inventory
//! of a root directory (dpkg databases read without ever leaving the root, the OS release, the
//! default kernel), dpkg version semantics, SBOMs (CycloneDX 1.5, SPDX 2.3), the Debian
//! Security Tracker and OSV feed formats, matching with exact Debian semantics, ignore rules and
//! the severity gate, the Image Builder `ImageScanFinding` shape of its findings, and the scan
//! report document ([`report::ScanDocument`]) the command line prints and builds keep. It must not
//! know about recipes, the catalogue database or the build sandbox: callers hand it a root
//! directory and feed bytes or paths, and store what it returns. The one place it talks HTTP is
//! [`feedstore`], which fetches feed URLs (conditionally) into its local store.

mod deb822;
pub mod feed;
pub mod feedstore;
pub mod finding;
pub mod inventory;
pub mod matching;
pub mod report;
pub mod rootfs;
pub mod sarif;
pub mod sbom;
pub mod severity;
pub mod version;

pub use feed::{Database, FeedError, FeedFormat, FeedInfo};
pub use feedstore::{FeedRecord, FeedStore, ImportOutcome, StoreError};
pub use finding::{Finding, FindingStatus, ImageScanFinding};
pub use inventory::{Inventory, InventoryError, OsRelease, Package, PackageManager, Problem};
pub use matching::{GateOutcome, IgnoreRule, ScanError, ScanOptions, ScanReport, evaluate_gate, scan};
pub use report::{InventorySummary, ScanDocument, ScanSummary};
pub use severity::Severity;
pub use version::{Version, VersionError};
