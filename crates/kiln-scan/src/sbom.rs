//! SBOMs of an inventory: CycloneDX 1.5 JSON and SPDX 2.3 JSON.
//!
//! The image is the root component (CycloneDX `metadata.component`, SPDX package described by
//! the document), every installed package is a component with its package URL
//! (`pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12`, epoch as the `epoch` qualifier as
//! the purl spec says for deb), and licences come from machine-readable (DEP-5) copyright files
//! only. The serial number and document namespace are derived from the content, so the same
//! image yields the same identifiers (reproducible builds stay reproducible); only the timestamp,
//! which the caller may fix, varies.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::inventory::{Inventory, Package, PackageManager};
use crate::version::Version;

/// What the caller knows about the image.
#[derive(Debug, Clone)]
pub struct SbomSubject {
    /// Image name (`web-server`).
    pub name: String,
    /// Image version (`1.2.3/4`).
    pub version: String,
    /// Creation time; `None`: now.
    pub timestamp: Option<time::OffsetDateTime>,
}

/// purl's percent-encoding: everything but the unreserved characters (RFC 3986) is encoded.
const PURL: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, PURL).to_string()
}

/// The `distro` qualifier: `debian-12` (or `debian-<codename>` on testing/unstable).
fn distro(inv: &Inventory) -> Option<String> {
    let os = inv.os.as_ref()?;
    let id = if os.id.is_empty() { "debian" } else { &os.id };
    let v = os.version_id.as_deref().or(os.codename.as_deref())?;
    Some(format!("{id}-{v}"))
}

/// The package URL of a package (qualifiers in the spec's canonical, sorted order).
pub fn purl(pkg: &Package, inv: &Inventory) -> String {
    let (kind, ns) = match pkg.manager {
        PackageManager::Dpkg => ("deb", inv.os.as_ref().map_or("debian", |o| o.id.as_str())),
        PackageManager::Rpm => ("rpm", inv.os.as_ref().map_or("", |o| o.id.as_str())),
        PackageManager::Apk => ("apk", "alpine"),
    };
    let ns = if ns.is_empty() { "debian" } else { ns };
    let (epoch, version) = match Version::parse(&pkg.version) {
        Ok(v) if v.epoch() > 0 => (Some(v.epoch()), v.without_epoch().to_string()),
        Ok(v) => (None, v.without_epoch().to_string()),
        Err(_) => (None, pkg.version.clone()),
    };
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(a) = &pkg.arch {
        q.push(("arch", a.clone()));
    }
    if let Some(d) = distro(inv) {
        q.push(("distro", d));
    }
    if let Some(e) = epoch {
        q.push(("epoch", e.to_string()));
    }
    q.sort_by(|a, b| a.0.cmp(b.0));
    let mut s = format!("pkg:{kind}/{}/{}@{}", enc(ns), enc(&pkg.name), enc(&version));
    for (i, (k, v)) in q.iter().enumerate() {
        s.push(if i == 0 { '?' } else { '&' });
        s.push_str(k);
        s.push('=');
        s.push_str(&enc(v));
    }
    s
}

fn content_uuid(subject: &SbomSubject, inv: &Inventory, kind: &str) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update(subject.name.as_bytes());
    h.update([0]);
    h.update(subject.version.as_bytes());
    for p in &inv.packages {
        h.update([0]);
        h.update(purl(p, inv).as_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // RFC 4122 name-based layout (version 8: custom hash), variant 10xx.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x: String = b.iter().map(|v| format!("{v:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}

fn timestamp(subject: &SbomSubject) -> String {
    let t = subject.timestamp.unwrap_or_else(time::OffsetDateTime::now_utc);
    let t = t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// DEP-5 short licence names that have an SPDX identifier.
fn spdx_id(dep5: &str) -> Option<&'static str> {
    let l = dep5.trim().to_ascii_lowercase();
    Some(match l.as_str() {
        "gpl-1" => "GPL-1.0-only",
        "gpl-1+" => "GPL-1.0-or-later",
        "gpl-2" | "gpl-2.0" => "GPL-2.0-only",
        "gpl-2+" | "gpl-2.0+" => "GPL-2.0-or-later",
        "gpl-3" | "gpl-3.0" => "GPL-3.0-only",
        "gpl-3+" | "gpl-3.0+" => "GPL-3.0-or-later",
        "lgpl-2" | "lgpl-2.0" => "LGPL-2.0-only",
        "lgpl-2+" | "lgpl-2.0+" => "LGPL-2.0-or-later",
        "lgpl-2.1" => "LGPL-2.1-only",
        "lgpl-2.1+" => "LGPL-2.1-or-later",
        "lgpl-3" | "lgpl-3.0" => "LGPL-3.0-only",
        "lgpl-3+" | "lgpl-3.0+" => "LGPL-3.0-or-later",
        "agpl-3" => "AGPL-3.0-only",
        "agpl-3+" => "AGPL-3.0-or-later",
        "gfdl-1.2" => "GFDL-1.2-only",
        "gfdl-1.2+" => "GFDL-1.2-or-later",
        "gfdl-1.3" => "GFDL-1.3-only",
        "gfdl-1.3+" => "GFDL-1.3-or-later",
        "apache-2" | "apache-2.0" => "Apache-2.0",
        "artistic" | "artistic-1" | "artistic-1.0" => "Artistic-1.0-Perl",
        "artistic-2.0" => "Artistic-2.0",
        "expat" | "mit" => "MIT",
        "bsd-2-clause" => "BSD-2-Clause",
        "bsd-3-clause" => "BSD-3-Clause",
        "bsd-4-clause" => "BSD-4-Clause",
        "isc" => "ISC",
        "zlib" => "Zlib",
        "mpl-1.1" => "MPL-1.1",
        "mpl-2.0" => "MPL-2.0",
        "cc0" | "cc0-1.0" => "CC0-1.0",
        "openssl" => "OpenSSL",
        "x11" => "X11",
        "curl" => "curl",
        "ftl" => "FTL",
        "bsl-1.0" => "BSL-1.0",
        "unlicense" => "Unlicense",
        "wtfpl" => "WTFPL",
        "psf-2" => "PSF-2.0",
        "python-2.0" => "Python-2.0",
        _ => return None,
    })
}

fn license_ref(dep5: &str) -> String {
    let s: String =
        dep5.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    format!("LicenseRef-{}", s.trim_matches('-'))
}

/// A DEP-5 licence value as an SPDX expression, plus the LicenseRefs it needs declared.
fn spdx_expression(dep5: &str, refs: &mut Vec<(String, String)>) -> String {
    let lower = dep5.to_ascii_lowercase();
    let (sep, spdx_sep) = if lower.contains(" or ") {
        (" or ", " OR ")
    } else if lower.contains(" and ") {
        (" and ", " AND ")
    } else {
        ("\u{0}", "")
    };
    let mut parts = Vec::new();
    let mut rest = dep5;
    loop {
        let idx = rest.to_ascii_lowercase().find(sep);
        let (tok, next) = match idx {
            Some(i) => (&rest[..i], Some(&rest[i + sep.len()..])),
            None => (rest, None),
        };
        let tok = tok.trim().trim_end_matches(',');
        parts.push(match spdx_id(tok) {
            Some(id) => id.to_string(),
            None => {
                let r = license_ref(tok);
                if !refs.iter().any(|(id, _)| *id == r) {
                    refs.push((r.clone(), tok.to_string()));
                }
                r
            }
        });
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    if parts.len() == 1 { parts.remove(0) } else { format!("({})", parts.join(spdx_sep)) }
}

/// CycloneDX 1.5 JSON.
pub fn cyclonedx(inv: &Inventory, subject: &SbomSubject) -> Value {
    let root_ref = "image";
    let mut components = Vec::new();
    let mut refs = Vec::new();
    for p in &inv.packages {
        let purl = purl(p, inv);
        let mut c = json!({
            "type": "library",
            "bom-ref": purl,
            "name": p.name,
            "version": p.version,
            "purl": purl,
            "properties": [
                {"name": "kiln:package:source", "value": p.source_name},
                {"name": "kiln:package:sourceVersion", "value": p.source_version},
                {"name": "kiln:package:manager", "value": serde_json::to_value(p.manager).unwrap_or_default()},
            ],
        });
        if !p.licenses.is_empty() {
            // DEP-5 names are not SPDX ids; CycloneDX takes them as named licences, or as ids
            // when they map exactly.
            let lic: Vec<Value> = p
                .licenses
                .iter()
                .map(|l| match spdx_id(l) {
                    Some(id) => json!({"license": {"id": id}}),
                    None => json!({"license": {"name": l}}),
                })
                .collect();
            c["licenses"] = Value::Array(lic);
        }
        refs.push(Value::String(purl));
        components.push(c);
    }
    let mut root = json!({
        "type": "container",
        "bom-ref": root_ref,
        "name": subject.name,
        "version": subject.version,
    });
    if let Some(os) = &inv.os {
        let mut props = vec![json!({"name": "kiln:os:id", "value": os.id})];
        if let Some(c) = &os.codename {
            props.push(json!({"name": "kiln:os:codename", "value": c}));
        }
        if let Some(v) = &os.version_id {
            props.push(json!({"name": "kiln:os:versionId", "value": v}));
        }
        root["properties"] = Value::Array(props);
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", content_uuid(subject, inv, "cdx")),
        "version": 1,
        "metadata": {
            "timestamp": timestamp(subject),
            "tools": {"components": [{"type": "application", "name": "kiln", "version": env!("CARGO_PKG_VERSION")}]},
            "component": root,
        },
        "components": components,
        "dependencies": [{"ref": root_ref, "dependsOn": refs}],
    })
}

fn spdx_ref(name: &str, arch: Option<&str>, n: usize) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect()
    };
    format!("SPDXRef-Package-deb-{}-{}-{n}", clean(name), clean(arch.unwrap_or("none")))
}

/// SPDX 2.3 JSON.
pub fn spdx(inv: &Inventory, subject: &SbomSubject) -> Value {
    let uuid = content_uuid(subject, inv, "spdx");
    let mut packages = vec![json!({
        "name": subject.name,
        "SPDXID": "SPDXRef-Image",
        "versionInfo": subject.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-Image",
    })];
    let mut refs: Vec<(String, String)> = Vec::new();
    for (n, p) in inv.packages.iter().enumerate() {
        let id = spdx_ref(&p.name, p.arch.as_deref(), n);
        let declared = if p.licenses.is_empty() {
            "NOASSERTION".to_string()
        } else {
            let exprs: Vec<String> = p.licenses.iter().map(|l| spdx_expression(l, &mut refs)).collect();
            if exprs.len() == 1 {
                exprs[0].clone()
            } else {
                exprs
                    .iter()
                    .map(
                        |e| if e.contains(' ') && !e.starts_with('(') { format!("({e})") } else { e.clone() },
                    )
                    .collect::<Vec<_>>()
                    .join(" AND ")
            }
        };
        packages.push(json!({
            "name": p.name,
            "SPDXID": id,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "LIBRARY",
            "sourceInfo": format!("built package from: {} {}", p.source_name, p.source_version),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared,
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(p, inv),
            }],
        }));
        relationships.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{} {}", subject.name, subject.version),
        "documentNamespace": format!("https://kiln.invalid/spdx/{}-{uuid}", enc(&subject.name)),
        "creationInfo": {
            "created": timestamp(subject),
            "creators": [format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !refs.is_empty() {
        doc["hasExtractedLicensingInfos"] = Value::Array(
            refs.iter()
                .map(|(id, name)| {
                    json!({
                        "licenseId": id,
                        "name": name,
                        "extractedText": format!("License \"{name}\" as named in the package's Debian copyright file (DEP-5); see /usr/share/doc/<package>/copyright in the image."),
                    })
                })
                .collect(),
        );
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep5_expressions() {
        let mut refs = Vec::new();
        assert_eq!(
            spdx_expression("GPL-2+ or Artistic", &mut refs),
            "(GPL-2.0-or-later OR Artistic-1.0-Perl)"
        );
        assert_eq!(spdx_expression("public-domain", &mut refs), "LicenseRef-public-domain");
        assert_eq!(refs.len(), 1);
    }
}
