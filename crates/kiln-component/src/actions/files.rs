//! File modules: CreateFile, AppendFile, CopyFile, MoveFile, DeleteFile, CreateSymlink,
//! ReadFile, SetFileEncoding, ListFiles. Each takes a *list* of items, handled in order; the
//! first failing item fails the step (earlier items stay done, as in AWSTOE).

use kiln_host::{FileKind, HostErrorKind, WriteMode};

use super::encoding::TextEncoding;
use super::util::{
    Checker, Field, Item, Ty, file_name, follow_links, glob_match, host_fail, items, join, kind_of,
    names_folder, opt, parent, req, resolve, resolve_owner, split_wildcard, walk,
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

/// Creates the parent folders of `path` (AWSTOE does so for these modules by default).
fn make_parent(ctx: &ActionContext<'_>, who: &Item<'_>, path: &str) -> Result<(), ActionFailure> {
    if let Some(p) = parent(path) {
        ctx.host.create_dir_all(p, None).map_err(|e| host_fail(&who.who(), "create the folder", p, &e))?;
    }
    Ok(())
}

/// Applies `owner`/`group`/`permissions` inputs to a path.
pub(crate) fn apply_properties(
    ctx: &ActionContext<'_>,
    item: &Item<'_>,
    path: &str,
) -> Result<(), ActionFailure> {
    if let Some(mode) = item.perm_opt("permissions")? {
        ctx.host
            .set_permissions(path, mode)
            .map_err(|e| host_fail(&item.who(), "set the permissions of", path, &e))?;
    }
    let owner = item.str_opt("owner")?.filter(|s| !s.is_empty());
    let group = item.str_opt("group")?.filter(|s| !s.is_empty());
    if owner.is_some() || group.is_some() {
        let (uid, gid) = resolve_owner(ctx.host, item, owner, group)?;
        ctx.host
            .set_owner(path, uid, gid)
            .map_err(|e| host_fail(&item.who(), "change the owner of", path, &e))?;
    }
    Ok(())
}

fn each(
    module: &'static str,
    inputs: Option<&Node>,
    mut f: impl FnMut(&Item<'_>) -> Result<(), ActionFailure>,
) -> Result<ActionOutcome, ActionFailure> {
    for item in items(module, inputs)? {
        f(&item)?;
    }
    Ok(ActionOutcome::default())
}

const ENCODED_FIELDS_NOTE: &str = "utf16 and utf32 are little-endian unless -BE is named";

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct CreateFile;

const CREATE_FILE_FIELDS: &[Field] = &[
    req("path", Ty::Str),
    opt("content", Ty::Str),
    opt("encoding", Ty::Encoding),
    opt("owner", Ty::Str),
    opt("group", Ty::Str),
    opt("permissions", Ty::Perm),
    opt("overwrite", Ty::Bool),
];

impl ActionModule for CreateFile {
    fn name(&self) -> &'static str {
        "CreateFile"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), CREATE_FILE_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        each(self.name(), inputs, |item| {
            let path = resolve(ctx, item.str_req("path")?);
            let content = item.str_opt("content")?.unwrap_or("");
            let data = item.encoding()?.encode(content);
            let overwrite = item.bool_or("overwrite", true)?;
            let mode = item.perm_opt("permissions")?;
            match kind_of(ctx.host, &path).map_err(|e| host_fail(&item.who(), "inspect", &path, &e))? {
                Some(FileKind::Dir) => return Err(item.fail(format!("{path} is a folder, not a file"))),
                Some(_) if !overwrite => {
                    return Err(item.fail(format!(
                        "{path} already exists and `overwrite` is false; remove it first or set overwrite: true"
                    )));
                }
                _ => {}
            }
            make_parent(ctx, item, &path)?;
            ctx.host
                .write_file(&path, &data, WriteMode::Truncate, mode)
                .map_err(|e| host_fail(&item.who(), "write", &path, &e))?;
            apply_properties(ctx, item, &path)
        })
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct AppendFile;

const APPEND_FILE_FIELDS: &[Field] =
    &[req("path", Ty::Str), opt("content", Ty::Str), opt("encoding", Ty::Encoding)];

impl ActionModule for AppendFile {
    fn name(&self) -> &'static str {
        "AppendFile"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), APPEND_FILE_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        each(self.name(), inputs, |item| {
            let path = resolve(ctx, item.str_req("path")?);
            let data = item.encoding()?.encode(item.str_opt("content")?.unwrap_or(""));
            let target = follow_links(ctx.host, &path).map_err(|e| match e.kind {
                HostErrorKind::NotFound => {
                    item.fail(format!("{path} does not exist; AppendFile only adds to an existing file (use CreateFile to make it)"))
                }
                _ => host_fail(&item.who(), "inspect", &path, &e),
            })?;
            if kind_of(ctx.host, &target).ok().flatten() == Some(FileKind::Dir) {
                return Err(item.fail(format!("{path} is a folder, not a file")));
            }
            ctx.host
                .write_file(&target, &data, WriteMode::Append, None)
                .map_err(|e| host_fail(&item.who(), "append to", &path, &e))
        })
    }
}

// ---------------------------------------------------------------------------------------------

/// The files a `source` names: one path, or the files matching a `*` in its last component.
fn sources(
    ctx: &ActionContext<'_>,
    item: &Item<'_>,
    source: &str,
    want: FileKind,
) -> Result<(Vec<String>, bool), ActionFailure> {
    let noun = if want == FileKind::Dir { "folder" } else { "file" };
    if let Some((dir, pattern)) = split_wildcard(source) {
        let dir = resolve(ctx, if dir.is_empty() { "." } else { dir });
        let entries = ctx.host.list_dir(&dir).map_err(|e| host_fail(&item.who(), "list", &dir, &e))?;
        let mut found: Vec<String> = entries
            .into_iter()
            .filter(|e| glob_match(pattern, &e.name))
            .filter(|e| if want == FileKind::Dir { e.kind == FileKind::Dir } else { e.kind != FileKind::Dir })
            .map(|e| join(&dir, &e.name))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(item.fail(format!("no {noun} in {dir} matches `{pattern}`")));
        }
        return Ok((found, true));
    }
    let path = resolve(ctx, source);
    match kind_of(ctx.host, &path).map_err(|e| host_fail(&item.who(), "inspect", &path, &e))? {
        None => Err(item.fail(format!("the source {noun} {path} does not exist"))),
        Some(FileKind::Dir) if want != FileKind::Dir => {
            Err(item.fail(format!("{path} is a folder; use CopyFolder or MoveFolder for folders")))
        }
        Some(k) if want == FileKind::Dir && k != FileKind::Dir => {
            Err(item.fail(format!("{path} is not a folder; use CopyFile or MoveFile for files")))
        }
        Some(_) => Ok((vec![path], false)),
    }
}

/// Where one source goes: `destination` itself, or `destination/NAME` when it ends with `/`.
fn destination_for(
    ctx: &ActionContext<'_>,
    item: &Item<'_>,
    dest_raw: &str,
    src: &str,
    wildcard: bool,
) -> Result<String, ActionFailure> {
    if names_folder(dest_raw) {
        Ok(join(&resolve(ctx, dest_raw), file_name(src)))
    } else if wildcard {
        Err(item.fail(format!(
            "the source has a wildcard, so `destination` must be a folder ending with `/` (found `{dest_raw}`)"
        )))
    } else {
        Ok(resolve(ctx, dest_raw))
    }
}

fn copy_or_move_files(ctx: &ActionContext<'_>, item: &Item<'_>, mv: bool) -> Result<(), ActionFailure> {
    let source = item.str_req("source")?;
    let dest_raw = item.str_req("destination")?;
    let overwrite = item.bool_or("overwrite", true)?;
    let (srcs, wildcard) = sources(ctx, item, source, FileKind::File)?;
    for src in srcs {
        let dest = destination_for(ctx, item, dest_raw, &src, wildcard)?;
        if dest == src {
            return Err(
                item.fail(format!("{src} cannot be {} onto itself", if mv { "moved" } else { "copied" }))
            );
        }
        match kind_of(ctx.host, &dest).map_err(|e| host_fail(&item.who(), "inspect", &dest, &e))? {
            Some(FileKind::Dir) => {
                return Err(item.fail(format!(
                    "a folder exists at {dest}; end `destination` with `/` to put the file inside it"
                )));
            }
            Some(_) if !overwrite => {
                return Err(item.fail(format!("{dest} already exists and `overwrite` is false")));
            }
            _ => {}
        }
        make_parent(ctx, item, &dest)?;
        if mv {
            ctx.host
                .rename(&src, &dest)
                .map_err(|e| host_fail(&item.who(), "move", &format!("{src} to {dest}"), &e))?;
        } else {
            let real = follow_links(ctx.host, &src)
                .map_err(|e| host_fail(&item.who(), "follow the link", &src, &e))?;
            ctx.host
                .copy_file(&real, &dest)
                .map_err(|e| host_fail(&item.who(), "copy", &format!("{src} to {dest}"), &e))?;
        }
    }
    Ok(())
}

const COPY_FIELDS: &[Field] =
    &[req("source", Ty::Str), req("destination", Ty::Str), opt("overwrite", Ty::Bool)];

#[derive(Debug)]
pub struct CopyFile;

impl ActionModule for CopyFile {
    fn name(&self) -> &'static str {
        "CopyFile"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), COPY_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        each(self.name(), inputs, |item| copy_or_move_files(ctx, item, false))
    }
}

#[derive(Debug)]
pub struct MoveFile;

impl ActionModule for MoveFile {
    fn name(&self) -> &'static str {
        "MoveFile"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), COPY_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        each(self.name(), inputs, |item| copy_or_move_files(ctx, item, true))
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct DeleteFile;

impl ActionModule for DeleteFile {
    fn name(&self) -> &'static str {
        "DeleteFile"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), &[req("path", Ty::Str)], file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        each(self.name(), inputs, |item| {
            let raw = item.str_req("path")?;
            if let Some((dir, pattern)) = split_wildcard(raw) {
                // Every matching file in that one folder; matching nothing is not an error.
                let dir = resolve(ctx, if dir.is_empty() { "." } else { dir });
                let entries = match ctx.host.list_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind == HostErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(host_fail(&item.who(), "list", &dir, &e)),
                };
                for e in entries.iter().filter(|e| e.kind != FileKind::Dir && glob_match(pattern, &e.name)) {
                    let p = join(&dir, &e.name);
                    ctx.host.remove_file(&p).map_err(|e| host_fail(&item.who(), "delete", &p, &e))?;
                }
                return Ok(());
            }
            let path = resolve(ctx, raw);
            match kind_of(ctx.host, &path).map_err(|e| host_fail(&item.who(), "inspect", &path, &e))? {
                None => Err(item.fail(format!("{path} does not exist"))),
                Some(FileKind::Dir) => Err(item.fail(format!("{path} is a folder; use DeleteFolder"))),
                Some(_) => {
                    ctx.host.remove_file(&path).map_err(|e| host_fail(&item.who(), "delete", &path, &e))
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct CreateSymlink;

const SYMLINK_FIELDS: &[Field] = &[req("path", Ty::Str), req("target", Ty::Str), opt("force", Ty::Bool)];

impl ActionModule for CreateSymlink {
    fn name(&self) -> &'static str {
        "CreateSymlink"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), SYMLINK_FIELDS, file, step_span, inputs, diags);
    }
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        each(self.name(), inputs, |item| {
            let link = resolve(ctx, item.str_req("path")?);
            // A relative target is taken from the working directory, like `path`, and stored
            // as that absolute path so the link points where the check looked.
            let target = resolve(ctx, item.str_req("target")?);
            let force = item.bool_or("force", false)?;
            if kind_of(ctx.host, &target)
                .map_err(|e| host_fail(&item.who(), "inspect", &target, &e))?
                .is_none()
            {
                return Err(item.fail(format!("the link target {target} does not exist")));
            }
            match kind_of(ctx.host, &link).map_err(|e| host_fail(&item.who(), "inspect", &link, &e))? {
                Some(FileKind::Symlink) if force => ctx
                    .host
                    .remove_file(&link)
                    .map_err(|e| host_fail(&item.who(), "replace the link", &link, &e))?,
                Some(FileKind::Symlink) => {
                    return Err(
                        item.fail(format!("a link already exists at {link}; set force: true to replace it"))
                    );
                }
                Some(_) => {
                    return Err(item.fail(format!(
                        "{link} already exists and is not a symbolic link; CreateSymlink never replaces it"
                    )));
                }
                None => {}
            }
            make_parent(ctx, item, &link)?;
            ctx.host.symlink(&target, &link).map_err(|e| host_fail(&item.who(), "create the link", &link, &e))
        })
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct ReadFile;

const READ_FIELDS: &[Field] =
    &[req("path", Ty::Str), opt("encoding", Ty::Encoding), opt("printFileContent", Ty::Bool)];

impl ActionModule for ReadFile {
    fn name(&self) -> &'static str {
        "ReadFile"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["content"]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), READ_FIELDS, file, step_span, inputs, diags);
    }
    /// Output `content` is the file's text; with several items, their texts joined by a
    /// newline. `printFileContent: true` puts the text in the step's standard output (the log).
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        let mut contents = Vec::new();
        let mut printed = Vec::new();
        for item in items(self.name(), inputs)? {
            let path = resolve(ctx, item.str_req("path")?);
            let enc = item.encoding()?;
            let bytes = ctx.host.read_file(&path).map_err(|e| match e.kind {
                HostErrorKind::NotFound => item.fail(format!("{path} does not exist")),
                _ => host_fail(&item.who(), "read", &path, &e),
            })?;
            let text = enc.decode(&bytes).map_err(|e| {
                item.fail(format!(
                    "{path} is {e}; name its encoding with `encoding:` ({ENCODED_FIELDS_NOTE})"
                ))
            })?;
            if item.bool_or("printFileContent", false)? {
                printed.extend_from_slice(text.as_bytes());
                if !text.ends_with('\n') {
                    printed.push(b'\n');
                }
            }
            contents.push(text);
        }
        let mut outcome = ActionOutcome { stdout: printed, ..ActionOutcome::default() };
        outcome.outputs.insert("content".into(), contents.join("\n").into());
        Ok(outcome)
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct SetFileEncoding;

const ENCODING_FIELDS: &[Field] = &[req("path", Ty::Str), opt("encoding", Ty::Encoding)];

impl ActionModule for SetFileEncoding {
    fn name(&self) -> &'static str {
        "SetFileEncoding"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), ENCODING_FIELDS, file, step_span, inputs, diags);
    }
    /// Converts the file's text from UTF-8 (or whatever a byte-order mark at its start says)
    /// to `encoding`, keeping its permissions.
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        each(self.name(), inputs, |item| {
            let path = resolve(ctx, item.str_req("path")?);
            let to = item.encoding()?;
            let bytes = ctx.host.read_file(&path).map_err(|e| match e.kind {
                HostErrorKind::NotFound => item.fail(format!("{path} does not exist")),
                _ => host_fail(&item.who(), "read", &path, &e),
            })?;
            let from = TextEncoding::sniff_bom(&bytes).unwrap_or(TextEncoding::Utf8);
            let text = from
                .decode(&bytes)
                .map_err(|e| item.fail(format!("{path} is {e}; only UTF-8 text can be converted")))?;
            ctx.host
                .write_file(&path, &to.encode(&text), WriteMode::Truncate, None)
                .map_err(|e| host_fail(&item.who(), "write", &path, &e))
        })
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct ListFiles;

const LIST_FIELDS: &[Field] =
    &[req("path", Ty::Str), opt("fileNamePattern", Ty::Str), opt("recursive", Ty::Bool)];

impl ActionModule for ListFiles {
    fn name(&self) -> &'static str {
        "ListFiles"
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["files"]
    }
    fn check(&self, file: &str, step_span: Span, inputs: Option<&Node>, diags: &mut Vec<Diagnostic>) {
        check_list(self.name(), LIST_FIELDS, file, step_span, inputs, diags);
    }
    /// Output `files`: the full paths of the files (not folders; symlinks are listed, never
    /// followed) in name order, joined by commas as AWSTOE's example shows.
    fn run(&self, inputs: Option<&Node>, ctx: &ActionContext<'_>) -> Result<ActionOutcome, ActionFailure> {
        let mut files = Vec::new();
        for item in items(self.name(), inputs)? {
            let dir = resolve(ctx, item.str_req("path")?);
            let pattern = item.str_opt("fileNamePattern")?.filter(|p| !p.is_empty());
            let recursive = item.bool_or("recursive", false)?;
            match kind_of(ctx.host, &dir).map_err(|e| host_fail(&item.who(), "inspect", &dir, &e))? {
                None => return Err(item.fail(format!("the folder {dir} does not exist"))),
                Some(FileKind::Dir) => {}
                Some(_) => return Err(item.fail(format!("{dir} is not a folder"))),
            }
            let mut entries = Vec::new();
            if recursive {
                walk(ctx.host, &dir, &mut entries).map_err(|e| host_fail(&item.who(), "list", &dir, &e))?;
            } else {
                let mut list =
                    ctx.host.list_dir(&dir).map_err(|e| host_fail(&item.who(), "list", &dir, &e))?;
                list.sort_by(|a, b| a.name.cmp(&b.name));
                entries.extend(list.into_iter().map(|e| (join(&dir, &e.name), e.kind)));
            }
            files.extend(
                entries
                    .into_iter()
                    .filter(|(p, k)| {
                        *k != FileKind::Dir && pattern.is_none_or(|pat| glob_match(pat, file_name(p)))
                    })
                    .map(|(p, _)| p),
            );
        }
        let mut outcome = ActionOutcome::default();
        outcome.outputs.insert("files".into(), files.join(",").into());
        Ok(outcome)
    }
}
