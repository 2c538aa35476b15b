//! `kiln audit`: the audit log of `kiln serve`, read from the state database.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use kiln_store::{AuditEntry, AuditFilter, AuditResult, Store};
use time::OffsetDateTime;

use crate::cli::AuditArgs;

pub fn run(home: &std::path::Path, args: AuditArgs) -> Result<ExitCode> {
    let filter = filter(&args, OffsetDateTime::now_utc())?;
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let entries = rt.block_on(async {
        let store = Store::open_default(home)
            .await
            .with_context(|| format!("opening kiln's state in {}", home.display()))?;
        store.list_audit(&filter).await.context("reading the audit log")
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else if entries.is_empty() {
        eprintln!("no audit records match");
    } else {
        print!("{}", table(&entries));
    }
    Ok(ExitCode::SUCCESS)
}

/// The store's filter of the command's options, newest first.
pub fn filter(args: &AuditArgs, now: OffsetDateTime) -> Result<AuditFilter> {
    let result = args.result.as_deref().map(|r| match r.to_ascii_lowercase().as_str() {
        "success" => AuditResult::Success,
        "failure" | "failed" => AuditResult::Failure,
        _ => AuditResult::Code(r.to_owned()),
    });
    Ok(AuditFilter {
        user: args.user.clone(),
        operation: args.operation.clone(),
        resource: args.resource.clone(),
        result,
        since: args.since.as_deref().map(|s| since(s, now)).transpose()?,
        newest_first: true,
        limit: Some(args.limit),
        ..AuditFilter::default()
    })
}

/// RFC 3339, or a duration before `now`: `90s`, `30m`, `2h`, `7d`.
fn since(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match n.parse::<i64>() {
        Ok(n) if seconds > 0 => Ok(now - time::Duration::seconds(n.saturating_mul(seconds))),
        _ => bail!(
            "--since {text}: give an RFC 3339 time (2024-03-31T00:00:00Z) or a duration such as 30m, 2h, 7d"
        ),
    }
}

/// One line per call: time, result, operation, who, resource, source.
pub fn table(entries: &[AuditEntry]) -> String {
    let fmt = time::format_description::well_known::Rfc3339;
    let mut out = format!(
        "{:<20}  {:<28} {:<28} {:<34} {:<16} {}\n",
        "TIME", "RESULT", "OPERATION", "WHO", "SOURCE", "RESOURCE"
    );
    for e in entries {
        let r = &e.record;
        let who = r.principal.as_deref().or(r.access_key_id.as_deref()).unwrap_or("-");
        let who = who.rsplit_once(":user/").map_or(who, |(_, name)| name);
        out.push_str(&format!(
            "{:<20}  {:<28} {:<28} {:<34} {:<16} {}\n",
            r.at.replace_nanosecond(0).unwrap_or(r.at).format(&fmt).unwrap_or_default(),
            r.result,
            r.operation,
            who,
            r.source_address.as_deref().unwrap_or("-"),
            r.resource.as_deref().unwrap_or("-"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(result: Option<&str>, since: Option<&str>) -> AuditArgs {
        AuditArgs {
            user: Some("arn:aws:iam::123456789012:user/ana".into()),
            operation: None,
            resource: None,
            result: result.map(str::to_owned),
            since: since.map(str::to_owned),
            limit: 10,
            json: false,
        }
    }

    #[test]
    fn options_become_the_store_filter() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let f = filter(&args(Some("success"), Some("2h")), now).unwrap();
        assert_eq!(f.result, Some(AuditResult::Success));
        assert_eq!(f.since, Some(now - time::Duration::hours(2)));
        assert!(f.newest_first);
        assert_eq!(f.limit, Some(10));
        let f = filter(&args(Some("AccessDeniedException"), Some("2024-03-31T00:00:00Z")), now).unwrap();
        assert_eq!(f.result, Some(AuditResult::Code("AccessDeniedException".into())));
        assert_eq!(f.since.unwrap().unix_timestamp(), 1_711_843_200);
        assert!(filter(&args(None, Some("yesterday")), now).is_err());
    }

    #[tokio::test]
    async fn prints_what_the_store_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_default(dir.path()).await.unwrap();
        let at = OffsetDateTime::from_unix_timestamp(1_711_843_200).unwrap();
        let record = |result: &str, status: u16| kiln_store::AuditRecord {
            at,
            request_id: "r-1".into(),
            account: Some("123456789012".into()),
            principal: Some("arn:aws:iam::123456789012:user/ana".into()),
            access_key_id: Some("AKIAEXAMPLE".into()),
            operation: "GetImage".into(),
            resource: Some("arn:aws:imagebuilder:local:123456789012:image/web/1.0.0/1".into()),
            result: result.into(),
            http_status: status,
            source_address: Some("10.0.0.7".into()),
            user_agent: None,
            duration_ms: 3,
        };
        store.record_audits(&[record("Success", 200), record("AccessDeniedException", 403)]).await.unwrap();
        let now = at + time::Duration::minutes(5);
        let wanted = filter(&args(Some("AccessDeniedException"), Some("1h")), now).unwrap();
        let denied = store.list_audit(&wanted).await.unwrap();
        assert_eq!(denied.len(), 1);
        let text = table(&denied);
        let line = text.lines().nth(1).unwrap();
        assert!(line.starts_with("2024-03-31T00:00:00Z  AccessDeniedException"), "{text}");
        assert!(line.contains("GetImage") && line.contains(" ana ") && line.contains("10.0.0.7"), "{text}");
        assert!(line.ends_with("image/web/1.0.0/1"), "{text}");
    }
}
