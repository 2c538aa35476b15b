//! Folder modules: CreateFolder, CopyFolder, MoveFolder, DeleteFolder (each takes a list).
//!
//! Where AWSTOE says an existing destination folder is "overwritten", kiln *merges*: files
//! from the source replace same-named files, everything else already there stays. AWSTOE's
//! wording is ambiguous and CopyFolder's own description says the destination is "the folder
//! where the contents of the source folder are copied"; merging never deletes data a document
//! did not name. CreateFolder on an existing folder keeps its content and applies the
//! owner/group/permissions inputs. With `overwrite: false` an existing destination is an error.

use kiln_host::{FileKind, HostErrorKind};

use super::files::apply_properties;
use super::util::{
    Checker, Field, Item, Ty, file_name, glob_match, host_fail, items, join, kind_of, names_folder, opt,
    parent, req, resolve, split_wildcard,
};
use super::{ActionContext, ActionFailure, ActionModule, ActionOutcome};
use crate::diag::Diagnostic;
use crate::node::{Node, Span};

fn check_list(
    module: &'static str,
    fields: &[Field],
    file: &str,
    step_span: Span,
    inputs: Option<&Node>,
    diags: &mut Vec<Diagnostic>,
) {
    Checker { file, module, diags }.list_of_items(step_span, inputs, fields);
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct CreateFolder;

const CREATE_FOLDER_FIELDS: &[Field] = &[
    req("path", Ty::Str),
    opt("owner", Ty::Str),
    opt("group", Ty::Str),
    opt("permissions", Ty::Perm),
    opt("overwrite", Ty::Bool),
];

impl ActionModule for CreateFolder {
    fn name(&self) -> &'static str {
        "CreateFolder"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), CREATE_FOLDER_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        for item in items(self.name(), inputs)? {
            let path = resolve(ctx, item.str_req("path")?);
            let overwrite = item.bool_or("overwrite", true)?;
            let mode = item.perm_opt("permissions")?;
            match kind_of(ctx.host, &path).map_err(|e| host_fail(&item.who(), "inspect", &path, &e))? {
                Some(FileKind::Dir) if !overwrite => {
                    return Err(
                        item.fail(format!("the folder {path} already exists and `overwrite` is false"))
                    );
                }
                Some(FileKind::Dir) => {}
                Some(_) => return Err(item.fail(format!("{path} exists and is not a folder"))),
                None => ctx
                    .host
                    .create_dir_all(&path, mode)
                    .map_err(|e| host_fail(&item.who(), "create the folder", &path, &e))?,
            }
            apply_properties(ctx, &item, &path)?;
        }
        Ok(ActionOutcome::default())
    }
}

// ---------------------------------------------------------------------------------------------

/// The folders a `source` names: one, or those matching a `*` in its last component.
fn folder_sources(
    ctx: &ActionContext<'_>,
    item: &Item<'_>,
    source: &str,
) -> Result<(Vec<String>, bool), ActionFailure> {
    if let Some((dir, pattern)) = split_wildcard(source) {
        let dir = resolve(ctx, if dir.is_empty() { "." } else { dir });
        let mut found: Vec<String> = ctx
            .host
            .list_dir(&dir)
            .map_err(|e| host_fail(&item.who(), "list", &dir, &e))?
            .into_iter()
            .filter(|e| e.kind == FileKind::Dir && glob_match(pattern, &e.name))
            .map(|e| join(&dir, &e.name))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(item.fail(format!("no folder in {dir} matches `{pattern}`")));
        }
        return Ok((found, true));
    }
    let path = resolve(ctx, source);
    match kind_of(ctx.host, &path).map_err(|e| host_fail(&item.who(), "inspect", &path, &e))? {
        None => Err(item.fail(format!("the source folder {path} does not exist"))),
        Some(FileKind::Dir) => Ok((vec![path], false)),
        Some(_) => Err(item.fail(format!("{path} is not a folder; use CopyFile or MoveFile for files"))),
    }
}

/// Resolves each source's destination and checks it may be written.
fn plan(
    ctx: &ActionContext<'_>,
    item: &Item<'_>,
    verb: &str,
) -> Result<Vec<(String, String, bool)>, ActionFailure> {
    let source = item.str_req("source")?;
    let dest_raw = item.str_req("destination")?;
    let overwrite = item.bool_or("overwrite", true)?;
    let (srcs, wildcard) = folder_sources(ctx, item, source)?;
    if wildcard && !names_folder(dest_raw) {
        return Err(item.fail(format!(
            "the source has a wildcard, so `destination` must end with `/` (found `{dest_raw}`)"
        )));
    }
    let mut out = Vec::new();
    for src in srcs {
        let dest = if names_folder(dest_raw) {
            join(&resolve(ctx, dest_raw), file_name(&src))
        } else {
            resolve(ctx, dest_raw)
        };
        if dest == src || dest.starts_with(&format!("{src}/")) || src == "/" {
            return Err(item.fail(format!("cannot {verb} {src} into itself ({dest})")));
        }
        let exists = match kind_of(ctx.host, &dest)
            .map_err(|e| host_fail(&item.who(), "inspect", &dest, &e))?
        {
            None => false,
            Some(FileKind::Dir) if overwrite => true,
            Some(FileKind::Dir) => {
                return Err(item.fail(format!("the folder {dest} already exists and `overwrite` is false")));
            }
            Some(_) => return Err(item.fail(format!("{dest} exists and is not a folder"))),
        };
        out.push((src, dest, exists));
    }
    Ok(out)
}

/// Copies the tree at `src` into `dest` (merging into an existing folder).
fn copy_tree(ctx: &ActionContext<'_>, item: &Item<'_>, src: &str, dest: &str) -> Result<(), ActionFailure> {
    let who = item.who();
    let mode = ctx.host.metadata(src).map_err(|e| host_fail(&who, "inspect", src, &e))?.mode;
    ctx.host
        .create_dir_all(dest, Some(mode & 0o7777))
        .map_err(|e| host_fail(&who, "create the folder", dest, &e))?;
    let mut entries = ctx.host.list_dir(src).map_err(|e| host_fail(&who, "list", src, &e))?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let (s, d) = (join(src, &e.name), join(dest, &e.name));
        let existing = kind_of(ctx.host, &d).map_err(|err| host_fail(&who, "inspect", &d, &err))?;
        match e.kind {
            FileKind::Dir => {
                if existing.is_some_and(|k| k != FileKind::Dir) {
                    return Err(item.fail(format!("cannot copy the folder {s}: a file is in the way at {d}")));
                }
                copy_tree(ctx, item, &s, &d)?;
            }
            FileKind::File => {
                if existing == Some(FileKind::Dir) {
                    return Err(item.fail(format!("cannot copy the file {s}: a folder is in the way at {d}")));
                }
                if existing == Some(FileKind::Symlink) {
                    ctx.host.remove_file(&d).map_err(|err| host_fail(&who, "replace", &d, &err))?;
                }
                ctx.host
                    .copy_file(&s, &d)
                    .map_err(|err| host_fail(&who, "copy", &format!("{s} to {d}"), &err))?;
            }
            FileKind::Symlink => {
                let target =
                    ctx.host.read_link(&s).map_err(|err| host_fail(&who, "read the link", &s, &err))?;
                match existing {
                    Some(FileKind::Dir) => {
                        return Err(
                            item.fail(format!("cannot copy the link {s}: a folder is in the way at {d}"))
                        );
                    }
                    Some(_) => {
                        ctx.host.remove_file(&d).map_err(|err| host_fail(&who, "replace", &d, &err))?
                    }
                    None => {}
                }
                ctx.host.symlink(&target, &d).map_err(|err| host_fail(&who, "create the link", &d, &err))?;
            }
            // Sockets, fifos and devices are not copied (AWSTOE copies files and folders).
            FileKind::Other => {}
        }
    }
    Ok(())
}

/// Moves everything under `src` into the existing folder `dest`, replacing same-named files,
/// then removes `src`.
fn merge_move(ctx: &ActionContext<'_>, item: &Item<'_>, src: &str, dest: &str) -> Result<(), ActionFailure> {
    let who = item.who();
    for e in ctx.host.list_dir(src).map_err(|e| host_fail(&who, "list", src, &e))? {
        let (s, d) = (join(src, &e.name), join(dest, &e.name));
        let existing = kind_of(ctx.host, &d).map_err(|err| host_fail(&who, "inspect", &d, &err))?;
        match (e.kind, existing) {
            (FileKind::Dir, Some(FileKind::Dir)) => merge_move(ctx, item, &s, &d)?,
            (FileKind::Dir, Some(_)) => {
                return Err(item.fail(format!("cannot move the folder {s}: a file is in the way at {d}")));
            }
            (_, Some(FileKind::Dir)) => {
                return Err(item.fail(format!("cannot move {s}: a folder is in the way at {d}")));
            }
            _ => ctx
                .host
                .rename(&s, &d)
                .map_err(|err| host_fail(&who, "move", &format!("{s} to {d}"), &err))?,
        }
    }
    ctx.host.remove_dir(src, false).map_err(|e| host_fail(&who, "remove the moved folder", src, &e))
}

const COPY_FIELDS: &[Field] =
    &[req("source", Ty::Str), req("destination", Ty::Str), opt("overwrite", Ty::Bool)];

#[derive(Debug)]
pub struct CopyFolder;

impl ActionModule for CopyFolder {
    fn name(&self) -> &'static str {
        "CopyFolder"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), COPY_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        for item in items(self.name(), inputs)? {
            for (src, dest, _) in plan(ctx, &item, "copy")? {
                copy_tree(ctx, &item, &src, &dest)?;
            }
        }
        Ok(ActionOutcome::default())
    }
}

#[derive(Debug)]
pub struct MoveFolder;

impl ActionModule for MoveFolder {
    fn name(&self) -> &'static str {
        "MoveFolder"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), COPY_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        for item in items(self.name(), inputs)? {
            for (src, dest, exists) in plan(ctx, &item, "move")? {
                if exists {
                    merge_move(ctx, &item, &src, &dest)?;
                    continue;
                }
                if let Some(p) = parent(&dest) {
                    ctx.host
                        .create_dir_all(p, None)
                        .map_err(|e| host_fail(&item.who(), "create the folder", p, &e))?;
                }
                ctx.host
                    .rename(&src, &dest)
                    .map_err(|e| host_fail(&item.who(), "move", &format!("{src} to {dest}"), &e))?;
            }
        }
        Ok(ActionOutcome::default())
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct DeleteFolder;

const DELETE_FIELDS: &[Field] = &[req("path", Ty::Str), opt("force", Ty::Bool)];

impl ActionModule for DeleteFolder {
    fn name(&self) -> &'static str {
        "DeleteFolder"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), DELETE_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        for item in items(self.name(), inputs)? {
            let path = resolve(ctx, item.str_req("path")?);
            let force = item.bool_or("force", false)?;
            if path == "/" {
                return Err(item.fail("refusing to delete the image's root folder"));
            }
            match kind_of(ctx.host, &path).map_err(|e| host_fail(&item.who(), "inspect", &path, &e))? {
                None => return Err(item.fail(format!("the folder {path} does not exist"))),
                Some(FileKind::Dir) => {}
                Some(FileKind::Symlink) => {
                    return Err(item.fail(format!("{path} is a symbolic link, not a folder; use DeleteFile")));
                }
                Some(_) => return Err(item.fail(format!("{path} is a file; use DeleteFile"))),
            }
            ctx.host.remove_dir(&path, force).map_err(|e| match e.kind {
                HostErrorKind::DirectoryNotEmpty => item.fail(format!(
                    "the folder {path} is not empty; set force: true to delete it with its content"
                )),
                _ => host_fail(&item.who(), "delete", &path, &e),
            })?;
        }
        Ok(ActionOutcome::default())
    }
}
