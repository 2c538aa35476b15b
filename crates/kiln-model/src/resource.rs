//! The resource file of `kiln build -f FILE`: components, an image recipe, an infrastructure
//! configuration and a distribution configuration, with the Image Builder API's names.
//!
//! Fields marked *kiln extension* have no Image Builder counterpart (there, the AMI and the
//! EC2 instance type carry them). Image Builder fields that make no sense on one machine
//! (`instanceProfileName`, `instanceTypes`, `securityGroupIds`, ...) are accepted and kept, so
//! the same shapes can be sent to the API.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_component::diag::Diagnostic;
use kiln_component::node::{Node, Span};
use kiln_component::typed::{Seg, span_at};
use serde::{Deserialize, Deserializer, Serialize};

use crate::version::{SemVer, VersionFilter};

/// Output formats kiln can write.
pub const FORMATS: &[&str] = &["raw", "qcow2", "vmdk", "vhdx", "vhd"];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceFile {
    /// Components defined by this file (referenced from the recipe by name and version).
    #[serde(default)]
    pub components: Vec<ComponentResource>,
    pub image_recipe: ImageRecipe,
    #[serde(default)]
    pub infrastructure_configuration: InfrastructureConfiguration,
    #[serde(default)]
    pub distribution_configuration: DistributionConfiguration,
    /// Vulnerability scanning of the build (Image Builder's pipeline-level setting; a build
    /// scans unless `imageScanningEnabled: false`).
    #[serde(default)]
    pub image_scanning_configuration: ImageScanningConfiguration,
    /// kiln extension: the compliance stage (profiles evaluated against the image, accepted
    /// exceptions, the gate). No compliance stage runs without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<ComplianceConfiguration>,
}

/// kiln extension: the compliance policy of a build. Profile names, rule ids and severities
/// are checked by the build before any work (this crate knows no profiles).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComplianceConfiguration {
    /// kiln's profiles (`cis-level1`, `anssi-intermediary`, ...), profile files relative to
    /// the resource file, or SCAP Security Guide profiles (`anssi_np_nt28_average`).
    #[serde(deserialize_with = "strings_or_string")]
    pub profiles: Vec<String>,
    /// Fail the build when the score (passed / (passed + failed), percent) is below this.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "number_or_text")]
    pub min_score: Option<f64>,
    /// Fail the build on any failed rule of this severity or above (low, medium, high, critical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on_severity: Option<String>,
    /// Rules whose result is accepted for this image, each with a justification.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<ComplianceException>,
}

/// kiln extension: one accepted rule in [`ComplianceConfiguration::exceptions`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComplianceException {
    pub rule_id: String,
    /// Why the rule's result is acceptable (required).
    pub justification: String,
}

/// `90` and `92.5` alike: the YAML reader keeps anything but whole numbers as text.
fn number_or_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => Ok(n.as_f64()),
        serde_json::Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a number"))),
        other => Err(serde::de::Error::custom(format!("expected a number, found {other}"))),
    }
}

/// Image Builder's `ImageScanningConfiguration`, plus kiln's scan policy.
///
/// Image Builder has Amazon Inspector scan the image; kiln scans the image's inventory
/// offline against the vulnerability feeds in its feed store, so scanning is on by default.
/// `ecrConfiguration` and `imageScanningTypes` are accepted and kept. The rest are kiln
/// extensions: the policy the build's scan stage applies. Severity names and dates are
/// checked by the build before any work (this crate knows no scanner).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageScanningConfiguration {
    /// Whether the build scans the image (default true).
    #[serde(default = "yes")]
    pub image_scanning_enabled: bool,
    /// Accepted and kept (container scans in Image Builder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecr_configuration: Option<serde_json::Value>,
    /// Accepted and kept (`TEST_INSTANCE_CVE`, `AMI_CVE` in Image Builder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_scanning_types: Option<Vec<String>>,
    /// kiln extension: fail the build when a finding at or above this severity remains
    /// (UNTRIAGED, INFORMATIONAL, LOW, MEDIUM, HIGH, CRITICAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on: Option<String>,
    /// kiln extension: report (and gate on) only findings with a fixed version available.
    #[serde(default)]
    pub only_fixable: bool,
    /// kiln extension: findings accepted, each with a reason and optionally until a date.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<ScanIgnoreRule>,
    /// kiln extension: feeds imported into the feed store before the scan (paths relative
    /// to the resource file, or http(s) URLs); the scan then uses only these. Without them,
    /// every stored feed answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<String>,
}

impl Default for ImageScanningConfiguration {
    fn default() -> Self {
        ImageScanningConfiguration {
            image_scanning_enabled: true,
            ecr_configuration: None,
            image_scanning_types: None,
            fail_on: None,
            only_fixable: false,
            ignore: Vec::new(),
            feeds: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// kiln extension: one accepted finding in [`ImageScanningConfiguration::ignore`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScanIgnoreRule {
    /// The vulnerability id or an alias (`CVE-2024-1234`, `DSA-5555-1`).
    pub vulnerability_id: String,
    /// Only for this binary package (every package when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Why the finding is acceptable (required).
    pub reason: String,
    /// The last day the rule applies, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// A component: an AWSTOE document with a name and a semantic version.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentResource {
    pub name: String,
    pub semantic_version: String,
    #[serde(default = "linux")]
    pub platform: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub change_description: Option<String>,
    #[serde(default)]
    pub supported_os_versions: Option<Vec<String>>,
    /// The document inline.
    #[serde(default)]
    pub data: Option<String>,
    /// The document's location: a path relative to the resource file, or `file://`.
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn linux() -> String {
    "Linux".to_string()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageRecipe {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub semantic_version: String,
    /// `debian-12-x86` (or its ARN), a disk image or root tarball path, or a kiln image
    /// (`NAME/VERSION`).
    pub parent_image: String,
    pub components: Vec<ComponentConfig>,
    #[serde(default)]
    pub working_directory: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub additional_instance_configuration: Option<serde_json::Value>,
    #[serde(default)]
    pub block_device_mappings: Option<serde_json::Value>,
    /// kiln extension: packages added to (`include`) or left out of (`exclude`) a bootstrapped
    /// Debian parent.
    #[serde(default)]
    pub packages: Option<PackageSet>,
    /// kiln extension: the Debian mirror for a bootstrapped parent.
    #[serde(default)]
    pub mirror: Option<String>,
    /// kiln extension: the disk layout (sizes and separate partitions).
    #[serde(default)]
    pub disk_layout: Option<DiskLayoutSpec>,
    /// kiln extension: words added to the kernel command line.
    #[serde(default)]
    pub kernel_command_line: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageSet {
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A recipe's reference to a component, with parameter values.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentConfig {
    /// A component ARN (`arn:aws:imagebuilder:REGION:ACCOUNT:component/NAME/VERSION`), or
    /// `NAME/VERSION` (`x` wildcards allowed in both), or a path to a document file.
    pub component_arn: String,
    #[serde(default)]
    pub parameters: Vec<ComponentParameter>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentParameter {
    pub name: String,
    /// Image Builder gives parameter values as a list of strings; kiln joins several with `,`.
    #[serde(deserialize_with = "strings_or_string")]
    pub value: Vec<String>,
}

/// kiln extension: disk sizes in MiB; absent sizes are computed from content with headroom.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskLayoutSpec {
    #[serde(default)]
    pub root_size_mib: Option<u64>,
    #[serde(default)]
    pub esp_size_mib: Option<u64>,
    #[serde(default)]
    pub root_mount_options: Vec<String>,
    #[serde(default)]
    pub partitions: Vec<PartitionSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartitionSpec {
    pub mount_point: String,
    #[serde(default)]
    pub size_mib: Option<u64>,
    #[serde(default)]
    pub mount_options: Vec<String>,
}

/// Where and how builds and tests run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InfrastructureConfiguration {
    #[serde(default = "local_name")]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Required by the AWS model; accepted and recorded.
    #[serde(default)]
    pub instance_profile_name: Option<String>,
    #[serde(default)]
    pub instance_types: Vec<String>,
    #[serde(default)]
    pub terminate_instance_on_failure: Option<bool>,
    #[serde(default)]
    pub sns_topic_arn: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub resource_tags: BTreeMap<String, String>,
    /// kiln extension: network for build steps: `none` (default) or `host`.
    #[serde(default)]
    pub network: NetworkPolicy,
    /// kiln extension: CPUs of the test instance.
    #[serde(default = "two")]
    pub cpus: u32,
    /// kiln extension: memory of the test instance, MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// kiln extension: how long the test instance may take to boot, seconds.
    #[serde(default = "default_test_timeout")]
    pub test_timeout_seconds: u64,
    /// kiln extension: where the build and validate phases run: `sandbox` (default; namespaces
    /// over the image's tree, one cached layer per component) or `vm` (a booted VM of the
    /// image so far, for components that need a running system: services, kernel modules, a
    /// real reboot).
    #[serde(default)]
    pub builder: BuilderKind,
}

impl Default for InfrastructureConfiguration {
    fn default() -> Self {
        InfrastructureConfiguration {
            name: local_name(),
            description: None,
            instance_profile_name: None,
            instance_types: Vec::new(),
            terminate_instance_on_failure: None,
            sns_topic_arn: None,
            tags: BTreeMap::new(),
            resource_tags: BTreeMap::new(),
            network: NetworkPolicy::None,
            cpus: two(),
            memory_mib: default_memory(),
            test_timeout_seconds: default_test_timeout(),
            builder: BuilderKind::Sandbox,
        }
    }
}

fn local_name() -> String {
    "local".to_string()
}
fn two() -> u32 {
    2
}
fn default_memory() -> u32 {
    1024
}
fn default_test_timeout() -> u64 {
    300
}

/// kiln extension: where build steps run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuilderKind {
    #[default]
    Sandbox,
    Vm,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkPolicy {
    #[default]
    None,
    Host,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DistributionConfiguration {
    #[serde(default = "local_name")]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "default_distributions")]
    pub distributions: Vec<Distribution>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl Default for DistributionConfiguration {
    fn default() -> Self {
        DistributionConfiguration {
            name: local_name(),
            description: None,
            distributions: default_distributions(),
            tags: BTreeMap::new(),
        }
    }
}

fn default_distributions() -> Vec<Distribution> {
    vec![Distribution {
        region: crate::LOCAL_REGION.to_string(),
        formats: default_formats(),
        store_url: None,
        kms_key_id: None,
        name: None,
        tags: BTreeMap::new(),
        launch_permission: None,
        ami_distribution_configuration: None,
    }]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Distribution {
    pub region: String,
    /// kiln extension: disk formats wanted in this region.
    #[serde(default = "default_formats")]
    pub formats: Vec<String>,
    /// kiln extension: the store backing the region (`file:///...`, `s3://...`).
    #[serde(default)]
    pub store_url: Option<String>,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// kiln shorthand for `amiDistributionConfiguration.name`: the image's name in this region,
    /// a template (see [`crate::template`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// kiln shorthand for `amiDistributionConfiguration.amiTags`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// kiln shorthand for `amiDistributionConfiguration.launchPermission`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_permission: Option<LaunchPermissionConfiguration>,
    #[serde(default)]
    pub ami_distribution_configuration: Option<AmiDistributionConfiguration>,
}

impl Distribution {
    /// The name template of this target: the shorthand `name`, else the AMI configuration's.
    pub fn name_template(&self) -> Option<&str> {
        self.name.as_deref().or(self.ami_distribution_configuration.as_ref().and_then(|a| a.name.as_deref()))
    }

    /// The tags this target puts on the image: `amiTags`, then the shorthand `tags` (which win).
    pub fn image_tags(&self) -> BTreeMap<String, String> {
        let mut tags =
            self.ami_distribution_configuration.as_ref().map(|a| a.ami_tags.clone()).unwrap_or_default();
        tags.extend(self.tags.clone());
        tags
    }

    /// The accounts (or `all`) this target grants launch permission to: `userIds`, `all` for
    /// `userGroups: [all]`, and `targetAccountIds` (kiln has one catalogue, so the accounts an
    /// AMI would be copied to get launch permission on the one image instead).
    pub fn launch_principals(&self) -> Vec<String> {
        let ami = self.ami_distribution_configuration.as_ref();
        let mut out: Vec<String> = Vec::new();
        for lp in self.launch_permission.iter().chain(ami.and_then(|a| a.launch_permission.as_ref())) {
            out.extend(lp.user_ids.iter().cloned());
            out.extend(lp.user_groups.iter().map(|g| g.to_ascii_lowercase()));
        }
        out.extend(ami.map(|a| a.target_account_ids.clone()).unwrap_or_default());
        out.sort();
        out.dedup();
        out
    }
}

/// Image Builder's `AmiDistributionConfiguration`: the output image in one region.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AmiDistributionConfiguration {
    /// The image's name in the region, a template (see [`crate::template`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_account_ids: Vec<String>,
    /// Tags put on the image; values may use the template variables (dynamic tags).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ami_tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_permission: Option<LaunchPermissionConfiguration>,
}

/// Image Builder's `LaunchPermissionConfiguration`: who may launch the image.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LaunchPermissionConfiguration {
    /// 12-digit account ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_ids: Vec<String>,
    /// Only `all` (public).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_groups: Vec<String>,
    /// Not supported by kiln (no organizations); an error when given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organization_arns: Vec<String>,
    /// Not supported by kiln (no organizations); an error when given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizational_unit_arns: Vec<String>,
}

fn default_formats() -> Vec<String> {
    vec!["qcow2".to_string()]
}

fn strings_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        // Tried in order: a list first, so a list is not taken as one value.
        Many(Vec<serde_json::Value>),
        One(serde_json::Value),
    }
    let text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        other => Err(serde::de::Error::custom(format!("a parameter value must be text, found {other}"))),
    };
    match OneOrMany::deserialize(d)? {
        OneOrMany::Many(items) => items.into_iter().map(text).collect(),
        OneOrMany::One(v) => Ok(vec![text(v)?]),
    }
}

/// Read and check a resource file. Every problem is a [`Diagnostic`] with `FILE:LINE:COLUMN`.
pub fn load_resource_file(path: &Path) -> Result<ResourceFile, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic::new(&name, Span::default(), format!("cannot read the resource file: {e}"))]
    })?;
    parse_resource_file(&name, &text)
}

/// Parse and check resource-file text named `file`.
pub fn parse_resource_file(file: &str, text: &str) -> Result<ResourceFile, Vec<Diagnostic>> {
    let root = kiln_component::yaml::parse(file, text)?;
    if root.as_map().is_none() {
        return Err(vec![Diagnostic::new(
            file,
            root.span,
            "a resource file is a map with `imageRecipe` and optionally `components`, \
             `infrastructureConfiguration`, `distributionConfiguration`",
        )]);
    }
    let parsed: ResourceFile = kiln_component::typed::deserialize(
        file,
        &root,
        Some("the resource file"),
        Some("add the field; see examples/ for complete resource files"),
    )?;
    let diags = check(file, &root, &parsed);
    if diags.is_empty() { Ok(parsed) } else { Err(diags) }
}

/// Semantic checks serde cannot make.
fn check(file: &str, root: &Node, r: &ResourceFile) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let at = |path: &[Seg<'_>]| span_at(root, path);
    use Seg::{Index, Key};
    if let Err(e) = SemVer::parse(&r.image_recipe.semantic_version) {
        diags.push(Diagnostic::new(file, at(&[Key("imageRecipe"), Key("semanticVersion")]), e.to_string()));
    }
    if r.image_recipe.components.is_empty() {
        diags.push(Diagnostic::new(
            file,
            at(&[Key("imageRecipe"), Key("components")]),
            "an image recipe needs at least one component",
        ));
    }
    for (i, c) in r.components.iter().enumerate() {
        if let Err(e) = SemVer::parse(&c.semantic_version) {
            diags.push(Diagnostic::new(
                file,
                at(&[Key("components"), Index(i), Key("semanticVersion")]),
                e.to_string(),
            ));
        }
        if c.data.is_some() == c.uri.is_some() {
            diags.push(
                Diagnostic::new(
                    file,
                    at(&[Key("components"), Index(i)]),
                    format!(
                        "component `{}` needs exactly one of `data` (the document inline) and `uri`",
                        c.name
                    ),
                )
                .with_hint("`uri: components/my.yml` is relative to this file"),
            );
        }
        if !c.platform.eq_ignore_ascii_case("linux") {
            diags.push(Diagnostic::new(
                file,
                at(&[Key("components"), Index(i), Key("platform")]),
                format!("platform `{}` is not supported: kiln builds Linux images", c.platform),
            ));
        }
        let dup =
            r.components[..i].iter().any(|o| o.name == c.name && o.semantic_version == c.semantic_version);
        if dup {
            diags.push(Diagnostic::new(
                file,
                at(&[Key("components"), Index(i)]),
                format!("component `{}` version {} is defined twice", c.name, c.semantic_version),
            ));
        }
    }
    for (i, c) in r.image_recipe.components.iter().enumerate() {
        if let Some((_, version)) = c.component_arn.rsplit_once('/')
            && !c.component_arn.contains(".yml")
            && !c.component_arn.contains(".yaml")
            && let Err(e) = VersionFilter::parse(version)
        {
            diags.push(Diagnostic::new(
                file,
                at(&[Key("imageRecipe"), Key("components"), Index(i), Key("componentArn")]),
                e.to_string(),
            ));
        }
    }
    for (i, d) in r.distribution_configuration.distributions.iter().enumerate() {
        for (j, f) in d.formats.iter().enumerate() {
            if !FORMATS.contains(&f.as_str()) {
                let mut diag = Diagnostic::new(
                    file,
                    at(&[
                        Key("distributionConfiguration"),
                        Key("distributions"),
                        Index(i),
                        Key("formats"),
                        Index(j),
                    ]),
                    format!("unknown output format `{f}`: kiln writes {}", FORMATS.join(", ")),
                );
                if let Some(s) = kiln_component::diag::suggest(f, FORMATS.iter().copied()) {
                    diag = diag.with_hint(format!("did you mean `{s}`?"));
                }
                diags.push(diag);
            }
        }
    }
    for (i, d) in r.distribution_configuration.distributions.iter().enumerate() {
        let base = [Key("distributionConfiguration"), Key("distributions"), Index(i)];
        let at_field = |fields: &[&str]| {
            let mut path = base.to_vec();
            path.extend(fields.iter().map(|f| Key(f)));
            at(&path)
        };
        let ami = d.ami_distribution_configuration.as_ref();
        let templates = [
            (d.name.as_deref(), vec!["name"]),
            (ami.and_then(|a| a.name.as_deref()), vec!["amiDistributionConfiguration", "name"]),
        ];
        for (template, path) in templates {
            if let Some(Err(e)) = template.map(crate::template::check) {
                diags.push(Diagnostic::new(file, at_field(&path), e.to_string()));
            }
        }
        let tag_maps = [
            (&d.tags, vec!["tags"]),
            (
                &ami.map(|a| a.ami_tags.clone()).unwrap_or_default(),
                vec!["amiDistributionConfiguration", "amiTags"],
            ),
        ];
        for (tags, path) in tag_maps {
            for (key, value) in tags {
                if let Err(e) = crate::template::check(value) {
                    let mut p = path.clone();
                    p.push(key.as_str());
                    diags.push(Diagnostic::new(file, at_field(&p), e.to_string()));
                }
            }
        }
        let permissions = [
            (d.launch_permission.as_ref(), vec!["launchPermission"]),
            (
                ami.and_then(|a| a.launch_permission.as_ref()),
                vec!["amiDistributionConfiguration", "launchPermission"],
            ),
        ];
        for (lp, path) in permissions {
            let Some(lp) = lp else { continue };
            let mut field = |name: &str, message: String| {
                let mut p = path.clone();
                p.push(name);
                diags.push(Diagnostic::new(file, at_field(&p), message));
            };
            if let Some(bad) = lp.user_ids.iter().find(|u| !is_account_id(u)) {
                field(
                    "userIds",
                    format!("`{bad}` is not an account id (twelve digits, such as 111122223333)"),
                );
            }
            if let Some(bad) = lp.user_groups.iter().find(|g| !g.eq_ignore_ascii_case("all")) {
                field("userGroups", format!("unknown user group `{bad}`: the only group is `all` (public)"));
            }
            if !lp.organization_arns.is_empty() {
                field("organizationArns", "kiln has no organizations: share with `userIds` instead".into());
            }
            if !lp.organizational_unit_arns.is_empty() {
                field(
                    "organizationalUnitArns",
                    "kiln has no organizations: share with `userIds` instead".into(),
                );
            }
        }
        if let Some(bad) = ami.and_then(|a| a.target_account_ids.iter().find(|u| !is_account_id(u))) {
            diags.push(Diagnostic::new(
                file,
                at_field(&["amiDistributionConfiguration", "targetAccountIds"]),
                format!("`{bad}` is not an account id (twelve digits, such as 111122223333)"),
            ));
        }
    }
    for (i, rule) in r.image_scanning_configuration.ignore.iter().enumerate() {
        let at_rule = |field| at(&[Key("imageScanningConfiguration"), Key("ignore"), Index(i), Key(field)]);
        if rule.vulnerability_id.trim().is_empty() {
            diags.push(Diagnostic::new(file, at_rule("vulnerabilityId"), "the vulnerability id is empty"));
        }
        if rule.reason.trim().is_empty() {
            diags.push(
                Diagnostic::new(
                    file,
                    at_rule("reason"),
                    format!("ignore rule for `{}` has an empty reason", rule.vulnerability_id),
                )
                .with_hint("say why the finding is acceptable"),
            );
        }
    }
    if let Some(c) = &r.compliance {
        if c.profiles.is_empty() {
            diags.push(
                Diagnostic::new(
                    file,
                    at(&[Key("compliance"), Key("profiles")]),
                    "no compliance profile is named",
                )
                .with_hint(
                    "name at least one, such as cis-level1; `kiln compliance --list-profiles` lists them",
                ),
            );
        }
        for (i, e) in c.exceptions.iter().enumerate() {
            let at_ex = |field| at(&[Key("compliance"), Key("exceptions"), Index(i), Key(field)]);
            if e.rule_id.trim().is_empty() {
                diags.push(Diagnostic::new(file, at_ex("ruleId"), "the rule id is empty"));
            }
            if e.justification.trim().is_empty() {
                diags.push(
                    Diagnostic::new(
                        file,
                        at_ex("justification"),
                        format!("the exception for `{}` has an empty justification", e.rule_id),
                    )
                    .with_hint("say why the rule's result is acceptable for this image"),
                );
            }
        }
    }
    if let Some(layout) = &r.image_recipe.disk_layout {
        for (i, p) in layout.partitions.iter().enumerate() {
            let span =
                at(&[Key("imageRecipe"), Key("diskLayout"), Key("partitions"), Index(i), Key("mountPoint")]);
            if !p.mount_point.starts_with('/') || p.mount_point == "/" || p.mount_point.contains("..") {
                diags.push(Diagnostic::new(
                    file,
                    span,
                    format!(
                        "mount point `{}` must be an absolute path below / (such as /var/log)",
                        p.mount_point
                    ),
                ));
            }
            if layout.partitions[..i]
                .iter()
                .any(|o| o.mount_point.trim_end_matches('/') == p.mount_point.trim_end_matches('/'))
            {
                diags.push(Diagnostic::new(
                    file,
                    span,
                    format!("mount point `{}` is given twice", p.mount_point),
                ));
            }
        }
    }
    diags.sort_by_key(|d| (d.line, d.column));
    diags
}

/// Whether `s` is an account id: twelve ASCII digits, as AWS's.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A diagnostic at a field of the resource file at `path`, for problems found after parsing
/// (by stages that know what a value means). `field` is a dotted path with indexes, such as
/// `compliance.exceptions[1].ruleId`; the position is that of the deepest node it reaches.
pub fn diagnostic_at(path: &Path, field: &str, message: impl Into<String>) -> Diagnostic {
    let name = path.display().to_string();
    let root = std::fs::read_to_string(path).ok().and_then(|t| kiln_component::yaml::parse(&name, &t).ok());
    let mut span = Span::default();
    if let Some(root) = &root {
        let mut node = root;
        'walk: for part in field.split('.') {
            let (key, indexes) = match part.split_once('[') {
                Some((k, rest)) => (k, Some(rest)),
                None => (part, None),
            };
            match node.get(key) {
                Some(n) => node = n,
                None => break,
            }
            for idx in indexes.into_iter().flat_map(|r| r.split('[')) {
                let Some(i) = idx.trim_end_matches(']').parse::<usize>().ok() else { break 'walk };
                match node.as_seq().and_then(|s| s.get(i)) {
                    Some(n) => node = n,
                    None => break 'walk,
                }
            }
        }
        span = node.span;
    }
    Diagnostic::new(&name, span, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
components:
  - name: hello
    semanticVersion: 1.0.0
    data: |
      name: hello
      schemaVersion: 1.0
      phases:
        - name: build
          steps:
            - name: Hi
              action: ExecuteBash
              inputs:
                commands: ["echo hi"]
imageRecipe:
  name: minimal
  semanticVersion: 1.2.3
  parentImage: debian-12-x86
  components:
    - componentArn: hello/1.x.x
      parameters:
        - name: Greeting
          value: ["hi", 5]
infrastructureConfiguration:
  name: local
  instanceProfileName: kiln
  memoryMib: 2048
distributionConfiguration:
  name: local
  distributions:
    - region: local
      formats: [qcow2, raw]
"#;

    #[test]
    fn reads_a_complete_file_with_defaults() {
        let r = parse_resource_file("r.yml", GOOD).unwrap();
        assert_eq!(r.image_recipe.components[0].parameters[0].value, ["hi", "5"]);
        assert_eq!(r.infrastructure_configuration.memory_mib, 2048);
        assert_eq!(r.infrastructure_configuration.network, NetworkPolicy::None);
        assert_eq!(r.distribution_configuration.distributions[0].formats, ["qcow2", "raw"]);
        assert_eq!(r.components[0].platform, "Linux");
    }

    fn errors(text: &str) -> Vec<String> {
        parse_resource_file("r.yml", text).unwrap_err().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn distribution_names_tags_and_launch_permissions() {
        let text = GOOD.replace(
            "      formats: [qcow2, raw]\n",
            "      formats: [qcow2, raw]\n      name: \"web-{{imagebuilder:buildDate}}\"\n      tags: { team: web }\n      amiDistributionConfiguration:\n        amiTags: { team: ops, built: \"{{ imagebuilder:buildVersion }}\" }\n        launchPermission: { userIds: [\"111111111111\"], userGroups: [all] }\n        targetAccountIds: [\"222222222222\"]\n",
        );
        let r = parse_resource_file("r.yml", &text).unwrap();
        let d = &r.distribution_configuration.distributions[0];
        assert_eq!(d.name_template(), Some("web-{{imagebuilder:buildDate}}"));
        let tags = d.image_tags();
        let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(tags, [("built", "{{ imagebuilder:buildVersion }}"), ("team", "web")]);
        assert_eq!(d.launch_principals(), ["111111111111", "222222222222", "all"]);

        let bad = text
            .replace("{{imagebuilder:buildDate}}", "{{imagebuilder:date}}")
            .replace("\"111111111111\"", "\"1111\"")
            .replace("userGroups: [all]", "userGroups: [friends]");
        let e = errors(&bad);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("r.yml:33:13: unknown variable `{{imagebuilder:date}}`"), "{e:?}");
        assert!(
            e[1].contains("`1111` is not an account id") && e[2].contains("unknown user group `friends`"),
            "{e:?}"
        );
    }

    #[test]
    fn errors_point_at_the_offending_key() {
        let bad = GOOD.replace("  instanceProfileName: kiln", "  instanceProfilName: kiln");
        let e = errors(&bad);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("r.yml:26:3: `infrastructureConfiguration.instanceProfilName`: unknown field `instanceProfilName`"),
            "{e:?}"
        );
        assert!(e[0].ends_with("(did you mean `instanceProfileName`?)"), "{e:?}");
        let e = errors(&GOOD.replace("semanticVersion: 1.2.3", "semanticVersion: 1.2"));
        assert!(e[0].starts_with("r.yml:17:20: `1.2` is not a semantic version"), "{e:?}");
        let e = errors(&GOOD.replace("formats: [qcow2, raw]", "formats: [qcow2, rwa]"));
        assert!(
            e[0].contains("unknown output format `rwa`") && e[0].contains("did you mean `raw`?"),
            "{e:?}"
        );
        let e = errors(&GOOD.replace("componentArn: hello/1.x.x", "componentArn: hello/1.x.3"));
        assert!(e[0].contains("`x` may only follow fixed parts"), "{e:?}");
        let e = errors(&GOOD.replace("  parentImage: debian-12-x86\n", ""));
        assert!(e[0].contains("missing field `parentImage`"), "{e:?}");
        let e = errors("- just\n- a list\n");
        assert!(e[0].contains("is a map with `imageRecipe`"), "{e:?}");
    }

    const POLICY: &str = r#"imageScanningConfiguration:
  ecrConfiguration:
    repositoryName: kept
  failOn: HIGH
  onlyFixable: true
  ignore:
    - vulnerabilityId: CVE-2019-18276
      package: bash
      reason: no login shell for users
      expires: 2030-01-31
    - vulnerabilityId: CVE-2024-1
      reason: not reachable
  feeds: [feeds/tracker.json, https://example.invalid/osv.zip]
"#;

    #[test]
    fn scanning_is_on_by_default_and_the_policy_is_read() {
        let r = parse_resource_file("r.yml", GOOD).unwrap();
        let scan = &r.image_scanning_configuration;
        assert!(scan.image_scanning_enabled);
        assert!(
            scan.fail_on.is_none() && !scan.only_fixable && scan.ignore.is_empty() && scan.feeds.is_empty()
        );

        let r = parse_resource_file("r.yml", &format!("{GOOD}{POLICY}")).unwrap();
        let scan = &r.image_scanning_configuration;
        assert!(scan.image_scanning_enabled);
        assert_eq!(scan.fail_on.as_deref(), Some("HIGH"));
        assert!(scan.only_fixable);
        assert_eq!(scan.ignore[0].package.as_deref(), Some("bash"));
        assert_eq!(scan.ignore[0].expires.as_deref(), Some("2030-01-31"), "a plain date stays text");
        assert_eq!(scan.ignore[1].expires, None);
        assert_eq!(scan.feeds, ["feeds/tracker.json", "https://example.invalid/osv.zip"]);
        assert_eq!(scan.ecr_configuration.as_ref().unwrap()["repositoryName"], "kept");
        // Kept in the JSON the catalogue stores, with Image Builder's names.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["imageScanningConfiguration"]["failOn"], "HIGH");
        assert_eq!(json["imageScanningConfiguration"]["ecrConfiguration"]["repositoryName"], "kept");

        let off = parse_resource_file(
            "r.yml",
            &format!("{GOOD}imageScanningConfiguration:\n  imageScanningEnabled: false\n"),
        )
        .unwrap();
        assert!(!off.image_scanning_configuration.image_scanning_enabled);
    }

    #[test]
    fn scanning_policy_mistakes_point_at_the_field() {
        let e = errors(&format!("{GOOD}{}", POLICY.replace("  failOn:", "  failOnn:")));
        assert!(e[0].contains("unknown field `failOnn`") && e[0].contains("did you mean `failOn`?"), "{e:?}");
        let e = errors(&format!("{GOOD}{}", POLICY.replace("reason: not reachable", "reason: ' '")));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("r.yml:44:15: ignore rule for `CVE-2024-1` has an empty reason"), "{e:?}");
        let e = errors(&format!("{GOOD}{}", POLICY.replace("      reason: not reachable\n", "")));
        assert!(e[0].contains("missing field `reason`"), "{e:?}");
    }

    const COMPLIANCE: &str = "compliance:
  profiles: [cis-level1, anssi_np_nt28_average]
  minScore: 92.5
  failOnSeverity: high
  exceptions:
    - ruleId: cis-1.1.2.1-tmp-separate
      justification: /tmp is a tmpfs set up by the application
";

    #[test]
    fn the_compliance_policy_is_read_and_checked() {
        assert!(parse_resource_file("r.yml", GOOD).unwrap().compliance.is_none());
        let r = parse_resource_file("r.yml", &format!("{GOOD}{COMPLIANCE}")).unwrap();
        let c = r.compliance.as_ref().unwrap();
        assert_eq!(c.profiles, ["cis-level1", "anssi_np_nt28_average"]);
        assert_eq!(c.min_score, Some(92.5));
        assert_eq!(c.fail_on_severity.as_deref(), Some("high"));
        assert_eq!(c.exceptions[0].rule_id, "cis-1.1.2.1-tmp-separate");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["compliance"]["minScore"], 92.5);
        let r = parse_resource_file("r.yml", &format!("{GOOD}{}", COMPLIANCE.replace("92.5", "90"))).unwrap();
        assert_eq!(r.compliance.unwrap().min_score, Some(90.0));

        let e = errors(&format!(
            "{GOOD}{}",
            COMPLIANCE.replace("      justification: /tmp is a tmpfs set up by the application\n", "")
        ));
        assert!(e[0].contains("missing field `justification`"), "{e:?}");
        let e = errors(&format!(
            "{GOOD}{}",
            COMPLIANCE.replace("/tmp is a tmpfs set up by the application", "''")
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "r.yml:39:22: the exception for `cis-1.1.2.1-tmp-separate` has an empty justification"
            ),
            "{e:?}"
        );
        let e = errors(&format!("{GOOD}{}", COMPLIANCE.replace("minScore: 92.5", "minScore: lots")));
        assert!(e[0].contains("`lots` is not a number"), "{e:?}");
        let e = errors(&format!("{GOOD}{}", COMPLIANCE.replace("failOnSeverity", "failOnSeverty")));
        assert!(e[0].contains("did you mean `failOnSeverity`?"), "{e:?}");
    }

    #[test]
    fn later_stages_point_at_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.yml");
        std::fs::write(&path, format!("{GOOD}{COMPLIANCE}")).unwrap();
        let d = diagnostic_at(&path, "compliance.exceptions[0].ruleId", "unknown rule");
        assert_eq!((d.line, d.column), (38, 15), "{d}");
        let d = diagnostic_at(&path, "compliance.profiles[1]", "unknown profile");
        assert_eq!((d.line, d.column), (34, 26), "{d}");
        let d = diagnostic_at(&path, "compliance.nothing", "x");
        assert_eq!((d.line, d.column), (34, 3), "the deepest node reached: {d}");
    }

    #[test]
    fn overlapping_mount_points_and_bad_components_are_refused() {
        let text = GOOD.replace(
            "  parentImage: debian-12-x86\n",
            "  parentImage: debian-12-x86\n  diskLayout:\n    partitions:\n      - mountPoint: /var/log\n      - mountPoint: /var/log/\n      - mountPoint: var\n",
        );
        let e = errors(&text);
        assert!(e.iter().any(|d| d.contains("`/var/log/` is given twice")), "{e:?}");
        assert!(e.iter().any(|d| d.contains("`var` must be an absolute path")), "{e:?}");
        let e = errors(&GOOD.replace("    data: |", "    uri: x.yml\n    data: |"));
        assert!(e[0].contains("exactly one of `data`"), "{e:?}");
    }
}
