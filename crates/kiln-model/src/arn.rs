//! Image Builder ARNs: `arn:aws:imagebuilder:REGION:ACCOUNT:TYPE/NAME/VERSION[/BUILD]`.

use std::fmt;

/// A parsed Image Builder ARN. The version part may be a filter (`x.x.x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arn {
    pub region: String,
    pub account: String,
    /// `image`, `component`, `image-recipe`, `infrastructure-configuration`, ...
    pub resource_type: String,
    pub name: String,
    pub version: Option<String>,
    pub build: Option<u64>,
}

impl Arn {
    pub fn parse(text: &str) -> Option<Arn> {
        let rest = text.strip_prefix("arn:aws:imagebuilder:")?;
        let mut fields = rest.splitn(3, ':');
        let region = fields.next()?.to_string();
        let account = fields.next()?.to_string();
        let resource = fields.next()?;
        let mut parts = resource.split('/');
        let resource_type = parts.next()?.to_string();
        let name = parts.next().filter(|n| !n.is_empty())?.to_string();
        let version = parts.next().map(str::to_string);
        let build = match parts.next() {
            Some(b) => Some(b.parse().ok()?),
            None => None,
        };
        if parts.next().is_some() || resource_type.is_empty() {
            return None;
        }
        Some(Arn { region, account, resource_type, name, version, build })
    }

    pub fn image(region: &str, account: &str, name: &str, version: &str, build: u64) -> Arn {
        Arn {
            region: region.into(),
            account: account.into(),
            resource_type: "image".into(),
            name: name.into(),
            version: Some(version.into()),
            build: Some(build),
        }
    }

    pub fn component(region: &str, account: &str, name: &str, version: &str) -> Arn {
        Arn {
            region: region.into(),
            account: account.into(),
            resource_type: "component".into(),
            name: name.into(),
            version: Some(version.into()),
            build: None,
        }
    }
}

impl fmt::Display for Arn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:aws:imagebuilder:{}:{}:{}/{}",
            self.region, self.account, self.resource_type, self.name
        )?;
        if let Some(v) = &self.version {
            write!(f, "/{v}")?;
        }
        if let Some(b) = self.build {
            write!(f, "/{b}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = "arn:aws:imagebuilder:local:000000000000:image/minimal/1.0.0/3";
        let a = Arn::parse(t).unwrap();
        assert_eq!((a.name.as_str(), a.version.as_deref(), a.build), ("minimal", Some("1.0.0"), Some(3)));
        assert_eq!(a.to_string(), t);
        let c = Arn::parse("arn:aws:imagebuilder:us-east-1:kiln:image/debian-12-x86/x.x.x").unwrap();
        assert_eq!((c.account.as_str(), c.version.as_deref(), c.build), ("kiln", Some("x.x.x"), None));
        for bad in
            ["arn:aws:s3:::b", "arn:aws:imagebuilder:r:a:image", "arn:aws:imagebuilder:r:a:image/n/1.0.0/x"]
        {
            assert!(Arn::parse(bad).is_none(), "{bad}");
        }
    }
}
