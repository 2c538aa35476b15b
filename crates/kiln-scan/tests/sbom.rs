//! SBOMs: purls, licences, and validation with the official validators from PyPI
//! (`cyclonedx-python-lib[json-validation]` for CycloneDX 1.5, `spdx-tools` for SPDX 2.3).
//! When the validators are not installed the validation test fails and says what to install,
//! so a missing tool cannot pass silently.

mod common;

use std::process::Command;

use kiln_scan::Inventory;
use kiln_scan::sbom::{SbomSubject, cyclonedx, purl, spdx};

fn subject() -> SbomSubject {
    SbomSubject {
        name: "web-server".into(),
        version: "1.2.3/4".into(),
        timestamp: Some(time::macros::datetime!(2026-01-02 03:04:05 UTC)),
    }
}

fn buster() -> Inventory {
    Inventory::from_root(&common::vuln_dir().join("peer-cases/trivy-debian-buster/rootfs")).unwrap()
}

fn licensed_image() -> tempfile::TempDir {
    let copyright = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
Files: *\nCopyright: 2020 A\nLicense: GPL-2+ or Artistic\n\nFiles: x/*\nCopyright: B\nLicense: public-domain\n";
    let status = common::stanza("perl-base", "5.36.0-7+deb12u1", Some("perl"), "")
        + &common::stanza("libgmp10", "2:6.2.1+dfsg1-1.1", Some("gmp"), "");
    common::image(&[
        ("etc/os-release", common::BOOKWORM_OS_RELEASE),
        ("var/lib/dpkg/status", &status),
        ("usr/share/doc/perl-base/copyright", copyright),
    ])
}

#[test]
fn purls_follow_the_spec() {
    let inv = buster();
    let get = |n: &str| purl(inv.packages.iter().find(|p| p.name == n).unwrap(), &inv);
    assert_eq!(get("libidn2-0"), "pkg:deb/debian/libidn2-0@2.0.5-1?arch=amd64&distro=debian-10");
    // `+` is percent-encoded; the epoch becomes a qualifier, qualifiers sorted by key.
    assert_eq!(get("libgmp10"), "pkg:deb/debian/libgmp10@6.1.2%2Bdfsg-4?arch=amd64&distro=debian-10&epoch=2");
    assert_eq!(get("libbz2-1.0"), "pkg:deb/debian/libbz2-1.0@1.0.6-9.2~deb10u1?arch=amd64&distro=debian-10");
}

#[test]
fn documents_have_the_image_as_root_and_licences() {
    let img = licensed_image();
    let inv = Inventory::from_root(img.path()).unwrap();
    let cdx = cyclonedx(&inv, &subject());
    assert_eq!(cdx["metadata"]["component"]["name"], "web-server");
    assert_eq!(cdx["components"].as_array().unwrap().len(), 2);
    let perl = cdx["components"].as_array().unwrap().iter().find(|c| c["name"] == "perl-base").unwrap();
    assert_eq!(perl["licenses"][0]["license"]["name"], "GPL-2+ or Artistic");
    assert_eq!(cdx["dependencies"][0]["dependsOn"].as_array().unwrap().len(), 2);
    // Same input, same identifiers.
    assert_eq!(cdx["serialNumber"], cyclonedx(&inv, &subject())["serialNumber"]);

    let doc = spdx(&inv, &subject());
    let pkgs = doc["packages"].as_array().unwrap();
    let perl = pkgs.iter().find(|p| p["name"] == "perl-base").unwrap();
    assert_eq!(
        perl["licenseDeclared"],
        "(GPL-2.0-or-later OR Artistic-1.0-Perl) AND LicenseRef-public-domain"
    );
    assert_eq!(doc["hasExtractedLicensingInfos"][0]["licenseId"], "LicenseRef-public-domain");
    assert_eq!(doc["relationships"][0]["relatedSpdxElement"], "SPDXRef-Image");
}

const CDX_VALIDATE: &str = r#"
import sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
err = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())
if err:
    print(err)
    sys.exit(1)
print("valid")
"#;

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn both_sboms_pass_the_official_validators() {
    assert!(
        python_has("cyclonedx.validation.json") && python_has("jsonschema") && python_has("spdx_tools"),
        "the official SBOM validators are missing: pip install 'cyclonedx-python-lib[json-validation]' spdx-tools"
    );
    let tmp = tempfile::tempdir().unwrap();
    let img = licensed_image();
    for (label, inv) in [("buster", buster()), ("licensed", Inventory::from_root(img.path()).unwrap())] {
        let cdx_path = tmp.path().join(format!("{label}.cdx.json"));
        std::fs::write(&cdx_path, serde_json::to_vec_pretty(&cyclonedx(&inv, &subject())).unwrap()).unwrap();
        let out = Command::new("python3").args(["-c", CDX_VALIDATE]).arg(&cdx_path).output().unwrap();
        assert!(
            out.status.success(),
            "{label}: CycloneDX 1.5 validation failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let spdx_path = tmp.path().join(format!("{label}.spdx.json"));
        std::fs::write(&spdx_path, serde_json::to_vec_pretty(&spdx(&inv, &subject())).unwrap()).unwrap();
        let out = Command::new("python3")
            .args(["-c", "from spdx_tools.spdx.clitools.pyspdxtools import main; main()", "-i"])
            .arg(&spdx_path)
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && !text.contains("invalid"),
            "{label}: SPDX 2.3 validation failed:\n{text}"
        );
    }
}
