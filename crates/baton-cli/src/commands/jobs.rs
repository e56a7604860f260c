//! `baton jobs` and `baton job ID`: what ran, is running, waits, or never ran, with exit codes
//! and output.

use baton_client::JobQuery;
use baton_client::proto::{CancelOutcome, Job, JobState};
use jiff::Timestamp;

use crate::args::{JobArgs, JobsArgs};
use crate::commands::Context;
use crate::exit;
use crate::output::{self, Table, absolute, relative};

/// `baton jobs`: a table of jobs, newest first.
pub async fn jobs(context: &Context, args: JobsArgs) -> anyhow::Result<u8> {
    let since = args.since.map(|ago| Timestamp::now() - ago);
    let states = args
        .state
        .iter()
        .flat_map(|text| text.split(','))
        .map(|state| {
            JobState::parse(state.trim())
                .map(|state| state.as_str().to_owned())
                .ok_or_else(|| anyhow::anyhow!("unknown job state {state:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let list = context
        .client
        .jobs(&JobQuery {
            name: args.name,
            states,
            since,
            until: None,
            batch: args.batch,
            limit: Some(args.limit),
        })
        .await?;
    if context.json {
        output::print_json(&list)?;
        return Ok(exit::SUCCESS);
    }
    if list.jobs.is_empty() {
        eprintln!("no jobs");
        return Ok(exit::SUCCESS);
    }
    let now = Timestamp::now();
    let mut table = Table::new(&[
        "ID", "NAME", "STATE", "HOST", "STARTED", "DURATION", "EXIT", "OWNER",
    ]);
    for job in &list.jobs {
        table.row(row(job, now));
    }
    table.print()?;
    Ok(exit::SUCCESS)
}

fn row(job: &Job, now: Timestamp) -> Vec<String> {
    let duration = match (job.started_at, job.duration_ms) {
        (_, Some(ms)) => output::duration(std::time::Duration::from_millis(ms)),
        (Some(start), None) => {
            let running = now.duration_since(start).as_millis().max(0) as u64;
            format!(
                "{} (running)",
                output::duration(std::time::Duration::from_millis(running))
            )
        }
        (None, None) => "-".into(),
    };
    vec![
        job.id.clone(),
        job.name.clone(),
        job.state.as_str().to_owned(),
        job.host.clone().unwrap_or_else(|| "-".into()),
        job.started_at
            .map_or_else(|| "-".into(), |at| relative(at, now)),
        duration,
        job.exit_code
            .map_or_else(|| "-".into(), |code| code.to_string()),
        job.owner.clone(),
    ]
}

/// `baton job ID`: every field and the output tail.
pub async fn job(context: &Context, args: JobArgs) -> anyhow::Result<u8> {
    let detail = context.client.job(&args.id).await?;
    if context.json {
        output::print_json(&detail)?;
        return Ok(exit::SUCCESS);
    }
    let job = &detail.job;
    let now = Timestamp::now();
    let mut lines = vec![
        format!("job           {}", job.id),
        format!("name          {}", job.name),
        format!("lock          {}", job.lock),
        format!("policy        {}", policy_name(job)),
        format!("state         {}", job.state.as_str()),
    ];
    let optional = [
        ("reason", job.reason.clone()),
        ("exit code", job.exit_code.map(|code| code.to_string())),
        ("token", job.token.map(|token| token.to_string())),
        ("coalesced into", job.coalesced_into.clone()),
        ("stop requested", job.stop_requested.clone()),
        ("batch", job.batch.clone()),
    ];
    for (label, value) in optional {
        if let Some(value) = value {
            lines.push(format!("{label:<13} {value}"));
        }
    }
    lines.push(format!("owner         {}", job.owner));
    if let Some(host) = &job.host {
        lines.push(format!("host          {host}"));
    }
    lines.push(format!(
        "command       {}",
        output::shell_words(&job.command)
    ));
    let times = [
        ("created", Some(job.created_at)),
        ("waiting", job.waiting_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
    ];
    for (label, at) in times {
        if let Some(at) = at {
            lines.push(format!(
                "{label:<13} {} ({})",
                absolute(at),
                relative(at, now)
            ));
        }
    }
    if let Some(ms) = job.duration_ms {
        lines.push(format!(
            "duration      {}",
            output::duration(std::time::Duration::from_millis(ms))
        ));
    }
    output::print_line(&lines.join("\n"))?;
    if !detail.output_tail.is_empty() {
        let running = if job.state == JobState::Running {
            ", so far"
        } else {
            ""
        };
        output::print_line(&format!(
            "\noutput (last {} bytes of {}{running}):",
            detail.output_tail.len(),
            job.output_total_bytes.max(detail.output_tail.len() as u64)
        ))?;
        output::print_line(detail.output_tail.trim_end_matches('\n'))?;
    }
    Ok(exit::SUCCESS)
}

/// `baton cancel JOB`: a waiting job leaves the queue (recorded `cancelled`); a running job's
/// runner is told to stop at its next heartbeat, stops the command's tree and records
/// `cancelled`. A job that already ended otherwise is refused (409 `job_state_conflict`,
/// exit 65).
pub async fn cancel(context: &Context, args: JobArgs) -> anyhow::Result<u8> {
    let answer = context.client.cancel_job(&args.id).await?;
    if context.json {
        output::print_json(&answer)?;
        return Ok(exit::SUCCESS);
    }
    let job = &answer.job;
    let what = match answer.outcome {
        CancelOutcome::Cancelled => "cancelled (it had not started; it left the queue)",
        CancelOutcome::Stopping => {
            "stopping: its runner stops the command at its next heartbeat and records it              cancelled"
        }
    };
    output::print_line(&format!("job {} ({}): {what}", job.id, job.name))?;
    Ok(exit::SUCCESS)
}

fn policy_name(job: &Job) -> &'static str {
    use baton_client::proto::Policy;
    match job.policy {
        Policy::Wait => "wait",
        Policy::Skip => "skip",
        Policy::Fail => "fail",
        Policy::Replace => "replace",
        Policy::Coalesce => "coalesce",
    }
}
