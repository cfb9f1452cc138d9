//! The runner with real child processes (`sh` scripts): the command contract of spec 3, and
//! every way a command can misbehave failing its job and nothing else.

mod common;

use std::time::Duration;

use common::{config, open_in, sh_service, wait_final, wait_for};
use futures::StreamExt;
use jobs::{OpenOptions, State};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(20);

/// Waits until process `pid` is gone (or a zombie nobody reaped yet: it runs no more).
async fn wait_gone(pid: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if matches!(state, None | Some('Z' | 'X')) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} still runs: {stat}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_job_commands_get_the_message_report_progress_and_return_json() {
    let temp = tempfile::tempdir().unwrap();
    let script = r#"msg=$(cat)
echo "progress 50 {\"step\": \"half\"}" >&2
echo "a log line" >&2
sleep 0.3
printf '{"echo": %s, "id": "%s", "service": "%s"}' "$msg" "$PORTICO_JOB_ID" "$PORTICO_SERVICE""#;
    let running = open_in(
        temp.path(),
        &config(vec![sh_service("echo", script, "per_job", 2)]),
        OpenOptions::default(),
    )
    .await;
    let jobs = &running.jobs;
    let message = json!({"service": {"misc": {"x": 1}}});
    let job = jobs.submit("echo", message.clone()).await.unwrap();
    let mut changes = Box::pin(jobs.changes(&job.id, 0));
    let mut seen = Vec::new();
    while let Some(change) = changes.next().await {
        seen.push(change.unwrap());
    }
    let last = seen.last().unwrap();
    assert_eq!(last.state, State::Success, "{last:#?}");
    assert_eq!(
        last.result,
        json!({"echo": message, "id": job.id.to_string(), "service": "echo"})
    );
    assert_eq!(last.attempts, 1);
    assert_eq!(last.progress, Some(100));
    assert!(last.log.contains("a log line"), "{:?}", last.log);
    assert!(
        !last.log.contains("progress 50"),
        "progress lines are not log"
    );
    let progress = seen
        .iter()
        .find(|j| j.state == State::Progress)
        .expect("a PROGRESS state was seen");
    assert_eq!(progress.progress, Some(50));
    let meta = &progress.meta;
    assert_eq!(meta["current"], 50);
    assert_eq!(meta["total"], 100);
    assert_eq!(meta["worker_id_version"], "1.2.3");
    assert_eq!(meta["type"], "echo");
    assert_eq!(meta["step"], "half");
    assert!(meta["host"].as_str().is_some_and(|h| !h.is_empty()));
    assert!(meta["start_time"].as_str().is_some_and(|t| !t.is_empty()));
    let versions: Vec<u64> = seen.iter().map(|j| j.version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_commands_fail_their_job_and_nothing_else() {
    let temp = tempfile::tempdir().unwrap();
    let pids = temp.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let script = format!(
        r#"msg=$(cat)
case "$msg" in
  *garbage*) printf '\377\376\375' ;;
  *exit3*) echo "first" >&2; echo "oops: bad input" >&2; exit 3 ;;
  *stderrflood*) head -c 30000000 /dev/zero | tr '\0' 'x' >&2; echo '"survived"' ;;
  *stdoutflood*) head -c 30000000 /dev/zero | tr '\0' 'y' ;;
  *noterm*) trap '' TERM; echo $$ > {pids}/noterm; while :; do sleep 0.1; done ;;
  *hang*) sleep 1000 & echo $! > {pids}/hang; wait ;;
  *signal*) kill -9 $$ ;;
  *) echo '{{"fine": true}}' ;;
esac"#,
        pids = pids.display()
    );
    let mut service = sh_service("bad", &script, "per_job", 3);
    service.timeout = Some(Duration::from_secs(2));
    let mut raw = config(vec![service]);
    raw.max_output = 1024 * 1024;
    let running = open_in(temp.path(), &raw, OpenOptions::default()).await;
    let jobs = &running.jobs;
    let cases = [
        ("garbage", "not UTF-8"),
        ("exit3", "exit status 3: first\noops: bad input"),
        ("stdoutflood", "larger than max_output"),
        ("noterm", "timed out after 2s"),
        ("hang", "timed out after 2s"),
        ("signal", "killed by signal SIGKILL"),
    ];
    let mut submitted = Vec::new();
    for (what, _) in &cases {
        submitted.push(jobs.submit("bad", json!({"case": what})).await.unwrap());
    }
    let flood = jobs
        .submit("bad", json!({"case": "stderrflood"}))
        .await
        .unwrap();
    for ((what, expected), job) in cases.iter().zip(&submitted) {
        let job = wait_final(jobs, job.id, LIMIT).await;
        assert_eq!(job.state, State::Failure, "{what}: {job:#?}");
        let message = &job.error.as_ref().unwrap().message;
        assert!(message.contains(expected), "{what}: {message:?}");
    }
    let flood = wait_final(jobs, flood.id, LIMIT).await;
    assert_eq!(flood.state, State::Success, "{flood:#?}");
    assert_eq!(flood.result, json!("survived"));
    assert!(flood.log.len() <= 64 * 1024 + 1, "{}", flood.log.len());
    // Killed with their whole process group, including a child that ignored SIGTERM.
    for name in ["noterm", "hang"] {
        let pid: i32 = std::fs::read_to_string(pids.join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_gone(pid).await;
    }
    // The slots are fine.
    let fine = jobs.submit("bad", json!({"case": "fine"})).await.unwrap();
    let fine = wait_final(jobs, fine.id, LIMIT).await;
    assert_eq!(fine.result, json!({"fine": true}), "{fine:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_running_job_and_a_queued_one_never_starts() {
    let temp = tempfile::tempdir().unwrap();
    let pid_file = temp.path().join("pid");
    let script = format!("sleep 1000 & echo $! > {}; wait", pid_file.display());
    let running = open_in(
        temp.path(),
        &config(vec![sh_service("slow", &script, "per_job", 1)]),
        OpenOptions::default(),
    )
    .await;
    let jobs = &running.jobs;
    let first = jobs.submit("slow", json!({})).await.unwrap();
    let second = jobs.submit("slow", json!({})).await.unwrap();
    wait_for(jobs, first.id, LIMIT, |j| j.state == State::Started).await;
    while !pid_file.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let revoked = jobs.cancel(&second.id).await.unwrap().unwrap();
    assert_eq!(revoked.state, State::Revoked);
    let revoked = jobs.cancel(&first.id).await.unwrap().unwrap();
    assert_eq!(revoked.state, State::Revoked);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_gone(pid).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = jobs.job(&second.id).await.unwrap().unwrap();
    assert_eq!(second.state, State::Revoked);
    assert_eq!(
        (second.attempts, second.started_at),
        (0, None),
        "it never started"
    );
    let first = jobs.job(&first.id).await.unwrap().unwrap();
    assert_eq!(
        first.state,
        State::Revoked,
        "the kill's report did not overwrite REVOKED"
    );
    assert!(jobs.cancel(&jobs::JobId::new()).await.unwrap().is_none());
}

/// A persistent worker in sh: answers each job with a progress line and its message.
const PERSISTENT_ECHO: &str = r#"while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed 's/^{"id":"\([^"]*\)".*/\1/')
  msg=$(printf '%s' "$line" | sed 's/^{"id":"[^"]*","message":\(.*\)}$/\1/')
  case "$msg" in
    *die*) echo "dying now" >&2; exit 7 ;;
    *garbage*) echo "this is not json" ;;
    *other*) printf '{"id":"not-%s","result":1}\n' "$id" ;;
    *fail*) printf '{"id":"%s","error":"it failed"}\n' "$id" ;;
    *) printf '{"id":"%s","progress":40,"meta":{"pid":%s}}\n' "$id" "$$"
       printf '{"id":"%s","result":{"got":%s,"pid":%s}}\n' "$id" "$msg" "$$" ;;
  esac
done"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_commands_answer_json_lines_and_are_restarted_after_trouble() {
    let temp = tempfile::tempdir().unwrap();
    let mut service = sh_service("fast", PERSISTENT_ECHO, "persistent", 1);
    service.max_attempts = 2;
    let running = open_in(temp.path(), &config(vec![service]), OpenOptions::default()).await;
    let jobs = &running.jobs;
    let mut pids = Vec::new();
    for n in 0..3 {
        let job = jobs.submit("fast", json!({"n": n})).await.unwrap();
        let job = wait_final(jobs, job.id, LIMIT).await;
        assert_eq!(job.state, State::Success, "{job:#?}");
        assert_eq!(job.result["got"], json!({"n": n}));
        pids.push(job.result["pid"].clone());
    }
    assert!(
        pids.windows(2).all(|w| w[0] == w[1]),
        "one process for every job: {pids:?}"
    );
    let failed = jobs.submit("fast", json!({"fail": 1})).await.unwrap();
    let failed = wait_final(jobs, failed.id, LIMIT).await;
    assert_eq!(failed.error.unwrap().message, "it failed");
    for (what, expected) in [
        ("garbage", "garbage on stdout: not a JSON line"),
        ("other", "a line for job"),
    ] {
        let job = jobs.submit("fast", json!({ what: 1 })).await.unwrap();
        let job = wait_final(jobs, job.id, LIMIT).await;
        assert_eq!(job.state, State::Failure);
        let message = job.error.unwrap().message;
        assert!(message.contains(expected), "{what}: {message}");
    }
    // A process that dies: the job runs again (a new process), and fails once
    // max_attempts runs were lost.
    let dies = jobs.submit("fast", json!({"die": 1})).await.unwrap();
    let dies = wait_final(jobs, dies.id, LIMIT).await;
    assert_eq!(dies.state, State::Failure);
    assert_eq!(dies.attempts, 2);
    let message = dies.error.unwrap().message;
    assert!(
        message.contains("worker lost")
            && message.contains("exit status 7")
            && message.contains("dying now"),
        "{message}"
    );
    let after = jobs.submit("fast", json!({"n": 9})).await.unwrap();
    let after = wait_final(jobs, after.id, LIMIT).await;
    assert_eq!(after.state, State::Success);
    assert_ne!(
        after.result["pid"], pids[0],
        "a new process after the trouble"
    );
}
