//! Components shipped with kiln: AWSTOE documents under `components/builtin/`, compiled into
//! the binary, each with its own semantic version, registered in the catalogue (source
//! `builtin`) whenever a build resolves components, so any recipe can name them like
//! catalogued components (`kiln-hardening-cis/1.x.x`).
//!
//! Names starting with [`PREFIX`] belong to kiln: a resource file may not define one, so a
//! recipe that names `kiln-...` always gets kiln's document. A document that changes must get
//! a new version here, since catalogued versions are immutable: registering a changed document
//! under an existing version fails the build with a message saying so.

use kiln_model::{ResourceFile, SemVer};

use crate::{BuildError, Kiln};

/// The prefix reserved for built-in components.
pub const PREFIX: &str = "kiln-";

/// One built-in component.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    pub name: &'static str,
    /// Semantic version; bump it whenever the document changes.
    pub version: &'static str,
    /// The document text, exactly as registered.
    pub document: &'static str,
}

macro_rules! builtin {
    ($name:literal, $version:literal) => {
        Builtin {
            name: $name,
            version: $version,
            document: include_str!(concat!("../../../components/builtin/", $name, ".yml")),
        }
    };
}

/// Every built-in component, in the order `kiln component builtin` lists them.
pub const BUILTINS: &[Builtin] = &[
    builtin!("kiln-update-linux", "1.0.0"),
    builtin!("kiln-hardening-cis", "1.0.1"),
    builtin!("kiln-hardening-anssi", "1.0.1"),
    builtin!("kiln-ssh-hardening", "1.0.1"),
    builtin!("kiln-firewall", "1.0.1"),
    builtin!("kiln-audit", "1.0.1"),
    builtin!("kiln-logging", "1.0.0"),
    builtin!("kiln-time-sync", "1.0.0"),
    builtin!("kiln-file-integrity", "1.0.1"),
    builtin!("kiln-unattended-upgrades", "1.0.1"),
];

/// The built-in component called `name`, if there is one.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// Whether `name` is in the namespace reserved for kiln's own components.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// Refuses a resource file that defines a component under the reserved prefix.
pub fn check_file(file: &ResourceFile) -> Result<(), BuildError> {
    let reserved: Vec<&str> =
        file.components.iter().map(|c| c.name.as_str()).filter(|n| is_reserved(n)).collect();
    if reserved.is_empty() {
        return Ok(());
    }
    Err(BuildError::Component(format!(
        "the resource file defines component(s) {}: names starting with `{PREFIX}` are reserved for \
         kiln's built-in components (`kiln component builtin` lists them); rename yours",
        reserved.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    )))
}

/// Checks `file` against the reserved prefix, then records every built-in component in the
/// catalogue (a no-op for versions recorded before with the same document).
pub(crate) fn prepare(kiln: &Kiln, file: &ResourceFile) -> Result<(), BuildError> {
    check_file(file)?;
    for b in BUILTINS {
        let version = SemVer::parse(b.version).map_err(|e| BuildError::Component(e.to_string()))?;
        let description = kiln_component::document::parse_document(b.name, b.document)
            .map_err(BuildError::Invalid)?
            .description
            .unwrap_or_default();
        kiln.block_on(kiln.store().ensure_component(&kiln_store::NewComponent {
            name: b.name.to_string(),
            version,
            platform: "Linux".into(),
            description,
            document: b.document.to_string(),
            source: kiln_store::ComponentSource::Builtin,
            tags: Default::default(),
        }))
        .map_err(|e| match e {
            kiln_store::StoreError::ComponentExists { .. } => BuildError::Component(format!(
                "built-in component {} {} differs from the one the catalogue recorded under that \
                     version: a changed built-in document needs a new version",
                b.name, b.version
            )),
            e => BuildError::Component(format!("registering built-in component {}: {e}", b.name)),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_component::document::{PhaseName, parse_document};

    #[test]
    fn every_builtin_document_is_valid_and_named_under_the_prefix() {
        assert_eq!(BUILTINS.len(), 10);
        for b in BUILTINS {
            let doc = parse_document(b.name, b.document).unwrap_or_else(|d| {
                panic!("{}: {}", b.name, d.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
            });
            assert!(is_reserved(b.name), "{} lacks the prefix", b.name);
            assert_eq!(doc.name.as_deref(), Some(b.name), "the document's own name");
            SemVer::parse(b.version).unwrap_or_else(|e| panic!("{}: {e}", b.name));
            assert!(doc.description.as_deref().is_some_and(|d| d.len() > 40), "{}: no description", b.name);
            for phase in PhaseName::ALL {
                assert!(doc.phase(phase).is_some(), "{} has no {} phase", b.name, phase.as_str());
            }
            // Every parameter has a default, so a recipe may name the component bare.
            let resolved = doc.resolve_parameters(&[]).unwrap_or_else(|e| panic!("{}: {e}", b.name));
            assert_eq!(resolved.len(), doc.parameters.len());
            for p in &doc.parameters {
                assert!(p.description.is_some(), "{}: parameter {} is undocumented", b.name, p.name);
            }
        }
        let mut names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BUILTINS.len(), "a name is listed twice");
    }

    /// Catalogued versions are immutable, so a document must not change under a released
    /// version: `components/builtin/RELEASED` records the digest of every released version.
    #[test]
    fn a_changed_document_gets_a_new_version() {
        use sha2::{Digest, Sha256};
        let released = include_str!("../../../components/builtin/RELEASED");
        for b in BUILTINS {
            let digest = hex::encode(Sha256::digest(b.document.as_bytes()));
            let recorded = released
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() == 3 && f[0] == b.name && f[1] == b.version).then(|| f[2])
                })
                .next();
            match recorded {
                Some(r) => assert_eq!(
                    r, digest,
                    "{} {} changed after its release: give it a new version and add a line for it",
                    b.name, b.version
                ),
                None => panic!(
                    "{} {} is not in components/builtin/RELEASED: add `{} {} {digest}`",
                    b.name, b.version, b.name, b.version
                ),
            }
        }
    }

    #[test]
    fn documents_that_install_packages_say_they_need_the_network() {
        for b in BUILTINS {
            let doc = parse_document(b.name, b.document).expect("valid");
            if b.document.contains("apt-get install") || b.document.contains("dist-upgrade") {
                let d = doc.description.unwrap_or_default();
                assert!(
                    d.contains("network"),
                    "{}: the description must say it needs the network: {d}",
                    b.name
                );
            }
        }
    }

    /// The component disables every module kiln's own CIS profile of the same level
    /// checks, so an image built with it passes those rules (udf once sat in Level 2 here while
    /// the profile checks it at Level 1).
    #[test]
    fn the_cis_component_disables_the_modules_its_profile_checks() {
        let cis = parse_document("cis", find("kiln-hardening-cis").unwrap().document).unwrap();
        for level in ["1", "2"] {
            // The module lists are the document's constants.
            let value = |name: &str| cis.constants.iter().find(|c| c.name == name).map(|c| c.value.clone());
            let mut disabled = value("ModulesLevel1").unwrap_or_default();
            if level == "2" {
                disabled.push(' ');
                disabled.push_str(&value("ModulesLevel2").unwrap_or_default());
            }
            let disabled: Vec<&str> = disabled.split_whitespace().collect();
            let profile = kiln_compliance::Profile::builtin(&format!("cis-level{level}")).unwrap().unwrap();
            for rule in &profile.rules {
                if let kiln_compliance::profile::Check::KernelModule(m) = &rule.check {
                    assert!(
                        disabled.contains(&m.module.as_str()),
                        "{}: {} at level {level} not in {disabled:?}",
                        rule.id,
                        m.module
                    );
                }
            }
        }
    }

    #[test]
    fn allowed_values_are_enforced_for_levels() {
        let cis = parse_document("cis", find("kiln-hardening-cis").unwrap().document).unwrap();
        assert!(cis.resolve_parameters(&[("Level".into(), "2".into())]).is_ok());
        let e = cis.resolve_parameters(&[("Level".into(), "3".into())]).unwrap_err();
        assert!(e.contains("`1`, `2`"), "{e}");
        let anssi = parse_document("anssi", find("kiln-hardening-anssi").unwrap().document).unwrap();
        for level in ["minimal", "intermediary", "enhanced"] {
            assert!(anssi.resolve_parameters(&[("Level".into(), level.into())]).is_ok(), "{level}");
        }
        assert!(anssi.resolve_parameters(&[("Level".into(), "high".into())]).is_err());
    }

    #[test]
    fn registering_is_idempotent_and_records_the_builtin_source() {
        let home = tempfile::tempdir().unwrap();
        let kiln = Kiln::open(home.path()).unwrap();
        let file: ResourceFile = serde_json::from_value(serde_json::json!({
            "imageRecipe": { "name": "r", "semanticVersion": "1.0.0", "parentImage": "debian-12-x86", "components": [] },
            "infrastructureConfiguration": { "name": "local", "instanceProfileName": "kiln" },
            "distributionConfiguration": { "name": "local", "distributions": [] }
        }))
        .expect("a minimal resource file");
        prepare(&kiln, &file).unwrap();
        prepare(&kiln, &file).expect("the same documents again are no change");
        let all = kiln.block_on(kiln.store().list_components(None)).unwrap();
        assert_eq!(all.len(), BUILTINS.len());
        assert!(all.iter().all(|c| c.source == kiln_store::ComponentSource::Builtin && is_reserved(&c.name)));
        let filter = kiln_model::VersionFilter::parse("1.x.x").unwrap();
        let cis = kiln.block_on(kiln.store().resolve_component("kiln-hardening-cis", &filter)).unwrap();
        assert_eq!(cis.document, find("kiln-hardening-cis").unwrap().document);
        assert!(cis.description.contains("CIS"), "{}", cis.description);
    }

    #[test]
    fn a_file_defining_a_reserved_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.yml");
        std::fs::write(
            &path,
            "components:\n  - name: kiln-my-hardening\n    semanticVersion: 1.0.0\n    data: |\n      name: x\n      schemaVersion: 1.0\n      phases:\n        - name: build\n          steps:\n            - name: S\n              action: ExecuteBash\n              inputs:\n                commands: [\"true\"]\nimageRecipe:\n  name: r\n  semanticVersion: 1.0.0\n  parentImage: debian-12-x86\n  components:\n    - componentArn: kiln-my-hardening/1.0.0\ninfrastructureConfiguration:\n  name: local\n  instanceProfileName: kiln\ndistributionConfiguration:\n  name: local\n  distributions:\n    - region: local\n      formats: [qcow2]\n",
        )
        .unwrap();
        let file = kiln_model::load_resource_file(&path).expect("the file itself is valid");
        let e = check_file(&file).unwrap_err().to_string();
        assert!(e.contains("`kiln-my-hardening`") && e.contains("reserved"), "{e}");
        // Naming a built-in component from a recipe is what the prefix is for.
        let ok =
            std::fs::read_to_string(&path).unwrap().replace("name: kiln-my-hardening", "name: my-hardening");
        std::fs::write(&path, ok).unwrap();
        check_file(&kiln_model::load_resource_file(&path).unwrap()).expect("not reserved");
    }
}
