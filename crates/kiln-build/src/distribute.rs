//! The distribution stage: a built image copied to every region of its distribution
//! configuration that names a store (`storeUrl`), through kiln-dist, with the outcome per region
//! kept in the catalogue. A region without a store is the output folder itself.

use std::path::{Path, PathBuf};

use kiln_dist::{ImageRef, Keyring, S3Options, Target};

use crate::{BuildError, Kiln};

/// How many chunks are uploaded at once per region.
const PARALLEL: usize = 8;

/// What happened in one region.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionOutcome {
    pub region: String,
    pub store_url: String,
    pub state: String,
    pub reason: Option<String>,
    pub uploaded_bytes: u64,
    pub total_bytes: u64,
}

/// A distribution target: the region name, its store, the formats wanted there and the keyring
/// key that encrypts it (Image Builder's `kmsKeyId`).
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub region: String,
    pub store_url: String,
    pub formats: Vec<String>,
    pub key: Option<String>,
}

/// The targets with a store in an image's manifest.
pub fn targets_of(manifest: &serde_json::Value) -> Vec<TargetSpec> {
    manifest["distributionConfiguration"]["distributions"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|t| {
                    Some(TargetSpec {
                        region: t["region"].as_str()?.to_string(),
                        store_url: t["storeUrl"].as_str()?.to_string(),
                        formats: t["formats"]
                            .as_array()
                            .map(|f| f.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                            .unwrap_or_default(),
                        key: t["kmsKeyId"].as_str().map(String::from),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// S3 settings from the environment (`KILN_S3_ENDPOINT` and the usual `AWS_*` variables).
pub(crate) fn s3_options() -> S3Options {
    S3Options {
        endpoint: std::env::var("KILN_S3_ENDPOINT").ok().filter(|v| !v.is_empty()),
        ..S3Options::default()
    }
}

impl Kiln {
    /// kiln's keyring (`KILN_HOME/keys`).
    pub fn keyring(&self) -> Result<Keyring, BuildError> {
        Keyring::open(&self.home.join("keys")).map_err(|e| BuildError::Store(e.to_string()))
    }

    /// The store of one region of an image (for verify and pull).
    pub fn region_target(&self, image: &kiln_store::Image, region: &str) -> Result<Target, BuildError> {
        let manifest = image.manifest.clone().unwrap_or_default();
        let targets = targets_of(&manifest);
        let t = targets.iter().find(|t| t.region == region).ok_or_else(|| {
            let known: Vec<&str> = targets.iter().map(|t| t.region.as_str()).collect();
            BuildError::Store(format!(
                "image {} has no region `{region}` with a store (its regions: {})",
                image.arn,
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ))
        })?;
        Target::open(&t.region, &t.store_url, t.key.clone(), &s3_options())
            .map_err(|e| BuildError::Store(e.to_string()))
    }

    /// Copies a catalogued image to every region of its distribution configuration with a
    /// store, skipping regions where it is already complete unless `again`. Records each
    /// region's outcome; one region failing does not stop the others.
    pub fn distribute(
        &self,
        image: &kiln_store::Image,
        again: bool,
    ) -> Result<Vec<RegionOutcome>, BuildError> {
        self.distribute_until(image, again, None)
    }

    /// [`Kiln::distribute`], stopped by `cancel`: the uploads in flight are dropped, and the
    /// regions they were for are recorded FAILED (`cancelled`) — their signed release, written
    /// last, was not, so no reader takes them for published; a later `kiln image distribute`
    /// resumes them. Regions finished before the cancel keep their AVAILABLE record (their
    /// release is complete). Returns [`BuildError::Cancelled`].
    pub fn distribute_until(
        &self,
        image: &kiln_store::Image,
        again: bool,
        cancel: Option<&kiln_host::Cancel>,
    ) -> Result<Vec<RegionOutcome>, BuildError> {
        let manifest = image.manifest.clone().ok_or_else(|| {
            BuildError::Store(format!("image {} has no manifest: it was never built to the end", image.arn))
        })?;
        let dir = PathBuf::from(image.output_location.clone().unwrap_or_default());
        let manifest_bytes = std::fs::read(dir.join("manifest.json"))
            .map_err(|e| BuildError::io("reading the image's manifest", dir.join("manifest.json"), e))?;
        let keyring = self.keyring()?;
        let reference =
            ImageRef { name: image.name.clone(), version: image.version.to_string(), build: image.build };
        let done: Vec<String> = self
            .block_on(self.store().image_regions(&image.arn))
            .map_err(|e| BuildError::Store(e.to_string()))?
            .into_iter()
            .filter(|r| r.state == "AVAILABLE")
            .map(|r| r.region)
            .collect();
        // Targets wanting the same files are pushed together, so each file is read once.
        let mut groups: Vec<(Vec<PathBuf>, Vec<_>)> = Vec::new();
        for (n, t) in targets_of(&manifest).into_iter().enumerate() {
            if !again && done.contains(&t.region) {
                continue;
            }
            let files = artifacts_for(&manifest, &dir, &t.formats);
            if let Some(key) = &t.key
                && keyring.versions(key).map(|v| v.is_empty()).unwrap_or(false)
            {
                // A target naming a key this kiln does not have yet: make it, as a local KMS
                // would have one made for the target (rotate it with `kiln key rotate`).
                keyring.create(key).map_err(|e| BuildError::Store(e.to_string()))?;
                tracing::warn!("created the key `{key}` in the keyring for region {}", t.region);
            }
            match groups.iter_mut().find(|(f, _)| *f == files) {
                Some((_, ts)) => ts.push((n, t)),
                None => groups.push((files, vec![(n, t)])),
            }
        }
        let mut outcomes = Vec::new();
        for (files, group) in groups {
            if crate::run::is_cancelled(cancel) {
                return Err(BuildError::Cancelled);
            }
            let mut results: Vec<Option<Result<kiln_dist::PushReport, kiln_dist::DistError>>> = Vec::new();
            let mut open = Vec::new();
            for (_, t) in &group {
                match Target::open(&t.region, &t.store_url, t.key.clone(), &s3_options()) {
                    Ok(target) => {
                        open.push(target);
                        results.push(None);
                    }
                    Err(e) => results.push(Some(Err(e))),
                }
            }
            let push = kiln_dist::push_many(&open, &keyring, &reference, &files, &manifest_bytes, PARALLEL);
            let pushed = self.block_on(async {
                tokio::select! {
                    r = push => Some(r),
                    () = cancelled(cancel) => None,
                }
            });
            let Some(pushed) = pushed else {
                for (_, t) in &group {
                    self.block_on(self.store().set_image_region(
                        &image.arn,
                        &t.region,
                        &t.store_url,
                        "FAILED",
                        Some("cancelled"),
                        0,
                        0,
                    ))
                    .map_err(|e| BuildError::Store(e.to_string()))?;
                }
                return Err(BuildError::Cancelled);
            };
            let mut pushed = pushed.into_iter();
            for ((n, t), result) in group.iter().zip(results) {
                let result = result.or_else(|| pushed.next()).expect("one result per opened target");
                let outcome = match result {
                    Ok(r) => RegionOutcome {
                        region: t.region.clone(),
                        store_url: t.store_url.clone(),
                        state: "AVAILABLE".into(),
                        reason: None,
                        uploaded_bytes: r.uploaded_bytes,
                        total_bytes: r.total_bytes,
                    },
                    Err(e) => RegionOutcome {
                        region: t.region.clone(),
                        store_url: t.store_url.clone(),
                        state: "FAILED".into(),
                        reason: Some(e.to_string()),
                        uploaded_bytes: 0,
                        total_bytes: 0,
                    },
                };
                self.block_on(self.store().set_image_region(
                    &image.arn,
                    &outcome.region,
                    &outcome.store_url,
                    &outcome.state,
                    outcome.reason.as_deref(),
                    outcome.uploaded_bytes,
                    outcome.total_bytes,
                ))
                .map_err(|e| BuildError::Store(e.to_string()))?;
                outcomes.push((*n, outcome));
            }
        }
        // In the manifest's order of targets, as before they were grouped.
        outcomes.sort_by_key(|(n, _)| *n);
        Ok(outcomes.into_iter().map(|(_, o)| o).collect())
    }
}

/// Resolves once `cancel` is cancelled (never without one). Polled: the token's hooks run in
/// the cancelling thread, which has no waker of this runtime's.
async fn cancelled(cancel: Option<&kiln_host::Cancel>) {
    let Some(cancel) = cancel else {
        return std::future::pending().await;
    };
    while !cancel.is_cancelled() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The files copied to a region: the disks in the formats it wants, and every other artifact
/// (SBOMs, reports).
fn artifacts_for(manifest: &serde_json::Value, dir: &Path, formats: &[String]) -> Vec<PathBuf> {
    const DISKS: &[&str] = &["raw", "qcow2", "vmdk", "vhdx", "vhd"];
    manifest["artifacts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| {
                    let f = x["format"].as_str().unwrap_or_default();
                    !DISKS.contains(&f) || formats.iter().any(|w| w == f)
                })
                .filter_map(|x| x["file"].as_str())
                // Reports in sub-folders keep their own names in the store (one flat folder).
                .filter(|f| !f.contains('/'))
                .map(|f| dir.join(f))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_their_artifacts_come_from_the_manifest() {
        let manifest = serde_json::json!({
            "distributionConfiguration": { "distributions": [
                { "region": "local", "formats": ["qcow2"] },
                { "region": "eu", "storeUrl": "file:///s/eu", "formats": ["qcow2"] },
                { "region": "us", "storeUrl": "file:///s/us", "formats": ["raw"], "kmsKeyId": "us-key" },
            ]},
            "artifacts": [
                { "file": "m.qcow2", "format": "qcow2" }, { "file": "m.raw", "format": "raw" },
                { "file": "sbom.cdx.json", "format": "sbom" }, { "file": "test-report/junit.xml", "format": "junit" },
            ],
        });
        let t = targets_of(&manifest);
        assert_eq!(t.iter().map(|t| t.region.as_str()).collect::<Vec<_>>(), ["eu", "us"]);
        assert_eq!(t[1].key.as_deref(), Some("us-key"));
        let names = |f: &[String]| -> Vec<String> {
            artifacts_for(&manifest, Path::new("/o"), f).iter().map(|p| p.display().to_string()).collect()
        };
        assert_eq!(names(&t[0].formats), ["/o/m.qcow2", "/o/sbom.cdx.json"]);
        assert_eq!(names(&t[1].formats), ["/o/m.raw", "/o/sbom.cdx.json"]);
    }
}
