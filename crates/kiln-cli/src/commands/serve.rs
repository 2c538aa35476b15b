//! `kiln serve` and `kiln admin`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_server::{ServeOptions, Server, WorkerOptions};

use crate::cli::{AdminCommand, LeaseArgs, ServeArgs, WorkerArgs};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

async fn open(home: &std::path::Path) -> Result<Server> {
    Server::open(home).await.with_context(|| format!("opening kiln's state in {}", home.display()))
}

pub fn run(home: &std::path::Path, args: ServeArgs) -> Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async {
        let server = open(home).await?;
        let mut options = ServeOptions::new(&args.listen);
        options.workers = worker_options(args.workers, &args.lease);
        options.monitor.webhooks = webhooks(&args)?;
        if args.no_scheduler {
            options.scheduler = None;
        }
        kiln_server::serve(
            server,
            options,
            |addr| {
                use std::io::Write;
                println!("listening on http://{addr}");
                let _ = std::io::stdout().flush();
            },
            shutdown_signal(),
        )
        .await
        .with_context(|| format!("serving on {}", args.listen))
    })?;
    // Builds still running on blocking threads were failed by `serve`; do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

fn worker_options(workers: u16, lease: &LeaseArgs) -> WorkerOptions {
    WorkerOptions {
        workers: usize::from(workers),
        lease: Duration::from_secs(lease.lease_seconds),
        shutdown_grace: Duration::from_secs(lease.shutdown_grace_seconds),
    }
}

/// `kiln worker`: the worker pool alone; prints `worker ready` once it claims jobs.
pub fn worker(home: &std::path::Path, args: WorkerArgs) -> Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async {
        let server = open(home).await?;
        kiln_server::work(
            server,
            worker_options(args.workers, &args.lease),
            || {
                use std::io::Write;
                println!("worker ready ({} at once)", args.workers);
                let _ = std::io::stdout().flush();
            },
            shutdown_signal(),
        )
        .await
        .context("running the workers")
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

/// The webhooks of `--webhook`, all signing with the one secret (never logged or printed).
fn webhooks(args: &ServeArgs) -> Result<Vec<kiln_api::webhook::Webhook>> {
    if args.webhooks.is_empty() {
        return Ok(Vec::new());
    }
    let secret = match &args.webhook_secret_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the webhook secret {}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        None => std::env::var("KILN_WEBHOOK_SECRET").unwrap_or_default(),
    };
    if secret.is_empty() {
        anyhow::bail!(
            "--webhook needs a secret to sign with: --webhook-secret-file FILE or KILN_WEBHOOK_SECRET \
             (32 random bytes or more, for example `openssl rand -hex 32`)"
        );
    }
    args.webhooks
        .iter()
        .map(|url| kiln_api::webhook::Webhook::new(url, secret.as_bytes(), Vec::new()).map_err(Into::into))
        .collect()
}

/// SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

pub fn admin(home: &std::path::Path, cmd: AdminCommand) -> Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async {
        let server = open(home).await?;
        match cmd {
            AdminCommand::CreateUser { name, policy, account, json } => {
                let text = std::fs::read_to_string(&policy)
                    .with_context(|| format!("reading the policy {}", policy.display()))?;
                let policy_name = policy
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| format!("{name}-policy"));
                let key = kiln_server::create_user(&server, &name, &account, &policy_name, &text)
                    .await
                    .with_context(|| format!("creating user {name} with the policy {}", policy.display()))?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "userName": key.user_name,
                            "userArn": key.user_arn,
                            "accountId": key.account,
                            "accessKeyId": key.access_key_id,
                            "secretAccessKey": key.secret_access_key,
                        })
                    );
                } else {
                    println!("created user {} ({})", key.user_name, key.user_arn);
                    println!("access key id:     {}", key.access_key_id);
                    println!("secret access key: {}", key.secret_access_key);
                    println!("(the secret is shown only now)");
                }
            }
            AdminCommand::ListUsers { json } => {
                let users = kiln_server::list_users(&server).await?;
                if json {
                    let list: Vec<serde_json::Value> = users
                        .iter()
                        .map(|u| {
                            serde_json::json!({
                                "userName": u.name, "userArn": u.arn, "accountId": u.account,
                                "policyName": u.policy_name, "accessKeyIds": u.access_key_ids,
                                "createdAt": u.created_at,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else if users.is_empty() {
                    println!("no users; `kiln admin create-user NAME --policy FILE` creates one");
                } else {
                    for u in users {
                        println!(
                            "{}  account {}  policy {}  keys {}",
                            u.name,
                            u.account,
                            u.policy_name,
                            u.access_key_ids.join(",")
                        );
                    }
                }
            }
            AdminCommand::DeleteUser { name } => {
                kiln_server::delete_user(&server, &name).await?;
                println!("deleted user {name} and its access keys");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
