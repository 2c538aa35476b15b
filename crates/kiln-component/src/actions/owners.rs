//! SetFileOwner, SetFolderOwner, SetFilePermissions, SetFolderPermissions (each takes a list).
//!
//! Users and groups are resolved through the *image's* account databases
//! ([`kiln_host::Host::lookup_user`]). `owner` may be `user` or `user:group`; a separate
//! `group` input is AWSTOE's form. Without a group, the user's primary group (from the image's
//! /etc/passwd) is used, as AWSTOE documents. The file modules act on what a symbolic link
//! points to (AWSTOE: "modifies the owner property of the source file"); the folder modules
//! walk the tree without following links, changing the links themselves for ownership and
//! skipping them for permissions (a link has no permissions of its own).

use kiln_host::{FileKind, HostErrorKind};

use super::util::{
    Checker, Field, Item, Ty, follow_links, host_fail, items, kind_of, opt, req, resolve, resolve_owner, walk,
};
use super::{ActionContext, ActionFailure, ActionModule, ActionOutcome};
use crate::diag::Diagnostic;
use crate::node::{Node, Span};

fn check(
    module: &'static str,
    fields: &[Field],
    file: &str,
    step_span: Span,
    inputs: Option<&Node>,
    diags: &mut Vec<Diagnostic>,
) {
    let mut c = Checker { file, module, diags };
    for item in c.list_of_items(step_span, inputs, fields) {
        if let (Some(owner), Some(_)) = (item.get("owner").and_then(Node::as_str), item.get("group"))
            && owner.contains(':')
        {
            let span = item.get("owner").map(|n| n.span).unwrap_or(item.span);
            c.err(
                span,
                format!("{module}: the group is given twice, in `owner` (user:group) and in `group`"),
                Some("keep one of them".into()),
            );
        }
    }
}

/// The target of a file module: must exist and not be a folder; symlinks are followed.
fn existing_file(ctx: &ActionContext<'_>, item: &Item<'_>, path: &str) -> Result<String, ActionFailure> {
    let real = follow_links(ctx.host, path).map_err(|e| match e.kind {
        HostErrorKind::NotFound => item.fail(format!("{path} does not exist")),
        _ => host_fail(&item.who(), "inspect", path, &e),
    })?;
    if kind_of(ctx.host, &real).ok().flatten() == Some(FileKind::Dir) {
        return Err(item.fail(format!("{path} is a folder; use the folder module instead")));
    }
    Ok(real)
}

fn existing_folder(ctx: &ActionContext<'_>, item: &Item<'_>, path: &str) -> Result<(), ActionFailure> {
    match kind_of(ctx.host, path).map_err(|e| host_fail(&item.who(), "inspect", path, &e))? {
        None => Err(item.fail(format!("the folder {path} does not exist"))),
        Some(FileKind::Dir) => Ok(()),
        Some(_) => Err(item.fail(format!("{path} is not a folder; use the file module instead"))),
    }
}

fn owner_ids(ctx: &ActionContext<'_>, item: &Item<'_>) -> Result<(Option<u32>, Option<u32>), ActionFailure> {
    let owner = item.str_req("owner")?;
    let group = item.str_opt("group")?.filter(|g| !g.is_empty());
    resolve_owner(ctx.host, item, Some(owner), group)
}

const FILE_OWNER_FIELDS: &[Field] = &[req("path", Ty::Str), req("owner", Ty::Str), opt("group", Ty::Str)];
const FOLDER_OWNER_FIELDS: &[Field] =
    &[req("path", Ty::Str), req("owner", Ty::Str), opt("group", Ty::Str), opt("recursive", Ty::Bool)];
const FILE_PERM_FIELDS: &[Field] = &[req("path", Ty::Str), req("permissions", Ty::Perm)];
const FOLDER_PERM_FIELDS: &[Field] =
    &[req("path", Ty::Str), req("permissions", Ty::Perm), opt("recursive", Ty::Bool)];

#[derive(Debug)]
pub struct SetFileOwner;

impl ActionModule for SetFileOwner {
    fn name(&self) -> &'static str {
        "SetFileOwner"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check(self.name(), FILE_OWNER_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        for item in items(self.name(), inputs)? {
            let path = resolve(ctx, item.str_req("path")?);
            let real = existing_file(ctx, &item, &path)?;
            let (uid, gid) = owner_ids(ctx, &item)?;
            ctx.host
                .set_owner(&real, uid, gid)
                .map_err(|e| host_fail(&item.who(), "change the owner of", &path, &e))?;
        }
        Ok(ActionOutcome::default())
    }
}

#[derive(Debug)]
pub struct SetFolderOwner;

impl ActionModule for SetFolderOwner {
    fn name(&self) -> &'static str {
        "SetFolderOwner"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check(self.name(), FOLDER_OWNER_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        for item in items(self.name(), inputs)? {
            let path = resolve(ctx, item.str_req("path")?);
            existing_folder(ctx, &item, &path)?;
            let (uid, gid) = owner_ids(ctx, &item)?;
            let mut all = vec![(path.clone(), FileKind::Dir)];
            if item.bool_or("recursive", true)? {
                walk(ctx.host, &path, &mut all).map_err(|e| host_fail(&item.who(), "list", &path, &e))?;
            }
            for (p, _) in all {
                ctx.host
                    .set_owner(&p, uid, gid)
                    .map_err(|e| host_fail(&item.who(), "change the owner of", &p, &e))?;
            }
        }
        Ok(ActionOutcome::default())
    }
}

#[derive(Debug)]
pub struct SetFilePermissions;

impl ActionModule for SetFilePermissions {
    fn name(&self) -> &'static str {
        "SetFilePermissions"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check(self.name(), FILE_PERM_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        for item in items(self.name(), inputs)? {
            let path = resolve(ctx, item.str_req("path")?);
            let mode = item
                .perm_opt("permissions")?
                .ok_or_else(|| item.fail("the input `permissions` is missing"))?;
            let real = existing_file(ctx, &item, &path)?;
            ctx.host
                .set_permissions(&real, mode)
                .map_err(|e| host_fail(&item.who(), "set the permissions of", &path, &e))?;
        }
        Ok(ActionOutcome::default())
    }
}

#[derive(Debug)]
pub struct SetFolderPermissions;

impl ActionModule for SetFolderPermissions {
    fn name(&self) -> &'static str {
        "SetFolderPermissions"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check(self.name(), FOLDER_PERM_FIELDS, file, step_span, inputs, diags);
    }
    /// The same bits go on the folder and, with `recursive` (the default), on every file and
    /// folder below it, as AWSTOE documents.
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        for item in items(self.name(), inputs)? {
            let path = resolve(ctx, item.str_req("path")?);
            let mode = item
                .perm_opt("permissions")?
                .ok_or_else(|| item.fail("the input `permissions` is missing"))?;
            existing_folder(ctx, &item, &path)?;
            let mut all = vec![(path.clone(), FileKind::Dir)];
            if item.bool_or("recursive", true)? {
                walk(ctx.host, &path, &mut all).map_err(|e| host_fail(&item.who(), "list", &path, &e))?;
            }
            for (p, kind) in all {
                if kind == FileKind::Symlink {
                    continue;
                }
                ctx.host
                    .set_permissions(&p, mode)
                    .map_err(|e| host_fail(&item.who(), "set the permissions of", &p, &e))?;
            }
        }
        Ok(ActionOutcome::default())
    }
}
