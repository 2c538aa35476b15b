//! Name templates of distribution targets (`name: "web-{{imagebuilder:buildDate}}"`) and dynamic
//! tag values: `{{ VARIABLE }}` placeholders, spaces inside the braces allowed as Image Builder
//! allows them.
//!
//! Image Builder documents `imagebuilder:buildDate` and `imagebuilder:buildVersion`; kiln adds
//! `kiln:imageName`, `kiln:imageVersion` (the semantic version), `kiln:region` and
//! `kiln:accountId`.

use std::collections::BTreeMap;

/// Every variable a template may use.
pub const VARIABLES: &[&str] = &[
    "imagebuilder:buildDate",
    "imagebuilder:buildVersion",
    "kiln:imageName",
    "kiln:imageVersion",
    "kiln:region",
    "kiln:accountId",
];

/// A template that cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown variable `{{{{{name}}}}}` in `{template}`; known: {}", VARIABLES.join(", "))]
    UnknownVariable { template: String, name: String },
    #[error("`{{{{` without a closing `}}}}` in `{template}`")]
    Unclosed { template: String },
}

/// The values of the variables for one image in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateValues {
    /// The build's time, already formatted (see [`build_date`]).
    pub build_date: String,
    pub build_version: u32,
    pub image_name: String,
    pub image_version: String,
    pub region: String,
    pub account_id: String,
}

impl TemplateValues {
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "imagebuilder:buildDate" => self.build_date.clone(),
            "imagebuilder:buildVersion" => self.build_version.to_string(),
            "kiln:imageName" => self.image_name.clone(),
            "kiln:imageVersion" => self.image_version.clone(),
            "kiln:region" => self.region.clone(),
            "kiln:accountId" => self.account_id.clone(),
            _ => return None,
        })
    }
}

/// `YYYY-MM-DDTHH-MM-SSZ` in UTC: a time without the colons image names may not hold.
pub fn build_date(at: time::OffsetDateTime) -> String {
    let t = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The variables `template` uses, in order; an error for an unknown one or an unclosed `{{`.
pub fn check(template: &str) -> Result<Vec<&str>, TemplateError> {
    let mut used = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| TemplateError::Unclosed { template: template.into() })?;
        let name = after[..end].trim();
        if !VARIABLES.contains(&name) {
            return Err(TemplateError::UnknownVariable { template: template.into(), name: name.into() });
        }
        used.push(name);
        rest = &after[end + 2..];
    }
    Ok(used)
}

/// `template` with every variable replaced by its value.
pub fn expand(template: &str, values: &TemplateValues) -> Result<String, TemplateError> {
    check(template)?;
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| TemplateError::Unclosed { template: template.into() })?;
        let name = after[..end].trim();
        let value = values
            .get(name)
            .ok_or_else(|| TemplateError::UnknownVariable { template: template.into(), name: name.into() })?;
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Tag values expanded as templates (Image Builder's dynamic tags); keys are kept as written.
pub fn expand_tags(
    tags: &BTreeMap<String, String>,
    values: &TemplateValues,
) -> Result<BTreeMap<String, String>, TemplateError> {
    tags.iter().map(|(k, v)| Ok((k.clone(), expand(v, values)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> TemplateValues {
        TemplateValues {
            build_date: build_date(time::macros::datetime!(2024-03-05 07:08:09 UTC)),
            build_version: 4,
            image_name: "web".into(),
            image_version: "1.2.3".into(),
            region: "eu".into(),
            account_id: "000000000000".into(),
        }
    }

    #[test]
    fn variables_expand_with_or_without_spaces() {
        let v = values();
        assert_eq!(
            expand("web-{{imagebuilder:buildDate}}-{{ imagebuilder:buildVersion }}", &v).unwrap(),
            "web-2024-03-05T07-08-09Z-4"
        );
        assert_eq!(
            expand("{{kiln:imageName}}/{{kiln:imageVersion}}@{{kiln:region}}:{{kiln:accountId}}", &v)
                .unwrap(),
            "web/1.2.3@eu:000000000000"
        );
        assert_eq!(expand("plain", &v).unwrap(), "plain");
    }

    #[test]
    fn unknown_and_unclosed_variables_are_errors() {
        let e = check("x-{{imagebuilder:buildDay}}").unwrap_err();
        assert!(e.to_string().contains("unknown variable `{{imagebuilder:buildDay}}`"), "{e}");
        assert!(e.to_string().contains("imagebuilder:buildDate"), "{e}");
        assert!(matches!(check("x-{{kiln:region"), Err(TemplateError::Unclosed { .. })));
        assert_eq!(check("{{kiln:region}}{{imagebuilder:buildVersion}}").unwrap().len(), 2);
    }
}
