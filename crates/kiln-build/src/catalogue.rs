//! The catalogue side of distribution: what a build's distribution configuration says about
//! the image (tags, launch permissions, its name in each region), applied when the build
//! registers the image, and who may use an image (`kiln launch`, `kiln image pull`).

use std::collections::BTreeMap;

use kiln_model::ResourceFile;
use kiln_model::template::{self, TemplateError, TemplateValues};
use kiln_store::{Image, ImageState};

use crate::{BuildError, Kiln};

/// What the distribution configuration (and the recipe) put on an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DistributionSettings {
    /// The recipe's tags, then every target's (`amiTags`, then `tags`), values expanded.
    pub tags: BTreeMap<String, String>,
    /// Accounts (or `all`) given launch permission by any target.
    pub launch_permissions: Vec<String>,
    /// `(region, name)` for each target with a name template, expanded.
    pub names: Vec<(String, String)>,
}

/// The settings `file`'s recipe and distribution targets give `image`. Pure: the build time is
/// the image's creation time.
pub fn distribution_settings(
    file: &ResourceFile,
    image: &Image,
) -> Result<DistributionSettings, TemplateError> {
    let values = |region: &str| TemplateValues {
        build_date: template::build_date(image.created_at),
        build_version: image.build,
        image_name: image.name.clone(),
        image_version: image.version.to_string(),
        region: region.to_string(),
        account_id: image.account.clone(),
    };
    let mut out = DistributionSettings {
        tags: template::expand_tags(&file.image_recipe.tags, &values(&image.region))?,
        ..Default::default()
    };
    for d in &file.distribution_configuration.distributions {
        let v = values(&d.region);
        out.tags.extend(template::expand_tags(&d.image_tags(), &v)?);
        out.launch_permissions.extend(d.launch_principals());
        if let Some(t) = d.name_template() {
            out.names.push((d.region.clone(), template::expand(t, &v)?));
        }
    }
    out.launch_permissions.sort();
    out.launch_permissions.dedup();
    Ok(out)
}

/// Why an account may not use an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error(
        "account {account} may not {action} image {arn}: it is owned by {owner} and not shared with {account}; \
         the owner can run `kiln image share {arn} --account {account}`"
    )]
    NotShared { arn: String, account: String, owner: String, action: String },
    #[error(
        "image {arn} is {state}{}: it can no longer be {action}ed; `kiln image list` shows the images in use",
        reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
    )]
    Retired { arn: String, state: ImageState, reason: Option<String>, action: String },
    #[error("image {arn} is {state}: only AVAILABLE and DEPRECATED images can be {action}ed")]
    NotReady { arn: String, state: ImageState, action: String },
}

impl Kiln {
    /// Apply what the distribution configuration says to a just-registered image: its tags
    /// (added to those it was created with), launch permissions and name per region.
    pub fn register_distribution(&self, image: &Image, file: &ResourceFile) -> Result<(), BuildError> {
        let settings =
            distribution_settings(file, image).map_err(|e| BuildError::Component(e.to_string()))?;
        let store = self.store();
        let err = |e: kiln_store::StoreError| BuildError::Store(e.to_string());
        // The tags the image was created with (the API's `tags` and a pipeline's `imageTags`)
        // stay, winning over the recipe's and distribution's of the same key: they were asked
        // for this very build.
        let mut tags = settings.tags.clone();
        tags.extend(image.tags.clone());
        self.block_on(store.set_image_tags(&image.arn, &tags)).map_err(err)?;
        if !settings.launch_permissions.is_empty() {
            self.block_on(store.add_launch_permissions(&image.arn, &settings.launch_permissions))
                .map_err(err)?;
        }
        for (region, name) in &settings.names {
            self.block_on(store.set_image_region_name(&image.arn, region, name)).map_err(err)?;
        }
        Ok(())
    }

    /// Whether `account` (the owner when `None`) may `action` (`launch`, `pull`) the image.
    /// `Ok(Some(warning))` for a DEPRECATED image: allowed, but the caller should say so.
    /// A refusal (not shared, or DISABLED/DELETED) is recorded as a usage event of kind
    /// `ACTION-refused`.
    pub fn check_access(
        &self,
        image: &Image,
        account: Option<&str>,
        action: &str,
    ) -> Result<Option<String>, BuildError> {
        let permissions = self
            .block_on(self.store().launch_permissions(&image.arn))
            .map_err(|e| BuildError::Store(e.to_string()))?;
        let decided = access(image, &permissions, account, action);
        if let Err(e @ (AccessError::NotShared { .. } | AccessError::Retired { .. })) = &decided {
            // A refused use is what threat detection looks for (`kiln serve` reads usage
            // events): who tried what on which image, and whether it was shared with them.
            let who = account.unwrap_or(&image.account);
            let details = serde_json::json!({
                "permitted": kiln_store::may_use(&image.account, &permissions, who),
                "imageState": image.state.as_str(),
                "reason": e.to_string(),
            });
            self.block_on(self.store().record_usage(&image.arn, &format!("{action}-refused"), who, &details))
                .map_err(|e| BuildError::Store(e.to_string()))?;
        }
        decided.map_err(BuildError::Access)
    }
}

/// The pure rule behind [`Kiln::check_access`].
pub fn access(
    image: &Image,
    permissions: &[String],
    account: Option<&str>,
    action: &str,
) -> Result<Option<String>, AccessError> {
    let account = account.unwrap_or(&image.account);
    match image.state {
        ImageState::Disabled | ImageState::Deleted => {
            return Err(AccessError::Retired {
                arn: image.arn.clone(),
                state: image.state,
                reason: image.reason.clone(),
                action: action.into(),
            });
        }
        ImageState::Available | ImageState::Deprecated => {}
        state => return Err(AccessError::NotReady { arn: image.arn.clone(), state, action: action.into() }),
    }
    if !kiln_store::may_use(&image.account, permissions, account) {
        return Err(AccessError::NotShared {
            arn: image.arn.clone(),
            account: account.into(),
            owner: image.account.clone(),
            action: action.into(),
        });
    }
    Ok((image.state == ImageState::Deprecated).then(|| {
        format!(
            "image {} is DEPRECATED{}: use a newer build",
            image.arn,
            image.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(state: ImageState) -> Image {
        Image {
            arn: "arn:aws:imagebuilder:local:000000000000:image/web/1.0.0/3".into(),
            name: "web".into(),
            version: "1.0.0".parse().unwrap(),
            build: 3,
            state,
            reason: None,
            recipe: serde_json::Value::Null,
            output_location: None,
            manifest: None,
            region: "local".into(),
            account: "000000000000".into(),
            tags: BTreeMap::new(),
            created_at: time::macros::datetime!(2024-05-06 10:11:12 UTC),
            updated_at: time::macros::datetime!(2024-05-06 10:11:12 UTC),
        }
    }

    #[test]
    fn settings_merge_tags_expand_names_and_collect_permissions() {
        let text = r#"
imageRecipe:
  name: web
  semanticVersion: 1.0.0
  parentImage: debian-12-x86
  components: [{ componentArn: hello/1.x.x }]
  tags: { team: web, os: debian }
distributionConfiguration:
  distributions:
    - region: eu
      name: "web-{{imagebuilder:buildDate}}-{{imagebuilder:buildVersion}}"
      tags: { os: bookworm }
      launchPermission: { userIds: ["111111111111"] }
    - region: us
      amiDistributionConfiguration:
        name: "{{kiln:imageName}}-{{kiln:imageVersion}}-{{kiln:region}}"
        amiTags: { build: "{{imagebuilder:buildVersion}}" }
        launchPermission: { userGroups: [all], userIds: ["111111111111"] }
    - region: local
"#;
        let file = kiln_model::parse_resource_file("r.yml", text).unwrap();
        let s = distribution_settings(&file, &image(ImageState::Pending)).unwrap();
        let tags: Vec<(&str, &str)> = s.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(tags, [("build", "3"), ("os", "bookworm"), ("team", "web")]);
        assert_eq!(s.launch_permissions, ["111111111111", "all"]);
        assert_eq!(
            s.names,
            [
                ("eu".to_string(), "web-2024-05-06T10-11-12Z-3".to_string()),
                ("us".to_string(), "web-1.0.0-us".to_string())
            ]
        );
    }

    #[test]
    fn owners_shared_accounts_and_retired_images() {
        let shared = vec!["111111111111".to_string()];
        let available = image(ImageState::Available);
        assert_eq!(access(&available, &[], None, "launch"), Ok(None));
        assert_eq!(access(&available, &shared, Some("111111111111"), "pull"), Ok(None));
        let e = access(&available, &shared, Some("222222222222"), "pull").unwrap_err();
        assert!(e.to_string().contains("account 222222222222 may not pull image arn:"), "{e}");
        assert!(e.to_string().contains("kiln image share"), "{e}");
        let warning = access(&image(ImageState::Deprecated), &[], None, "launch").unwrap();
        assert!(warning.is_some_and(|w| w.contains("DEPRECATED")));
        let e = access(&image(ImageState::Disabled), &shared, None, "launch").unwrap_err();
        assert!(e.to_string().contains("is DISABLED"), "{e}");
        assert!(matches!(
            access(&image(ImageState::Building), &[], None, "launch"),
            Err(AccessError::NotReady { .. })
        ));
    }
}
