//! Every limit of the sandbox holds with its own error: CPU (the CPU the plugin ran, not the
//! time it waited), memory, stack, panics, output, wall clock, timers and what it prints.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_within_twice_its_cpu_budget() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    let budget = Duration::from_millis(100);
    let started = Instant::now();
    let out = h.event("abuse.loop", json!({})).await;
    let (reason, message) = trap_of(&out.result);
    assert_eq!(reason, TrapReason::CpuBudget, "{message}");
    assert!(
        out.cpu >= budget && out.cpu <= 2 * budget,
        "stopped after {:?} of CPU",
        out.cpu
    );
    assert!(
        started.elapsed() < 10 * budget,
        "the loop held the caller for {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_is_charged_the_cpu_it_ran_not_the_time_it_waited_for_a_core() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    let budget = Duration::from_millis(100);
    // Work of about a fifth of the budget on a free core (the guest's code is compiled the
    // same in every build of the engine).
    let mut rounds: u64 = 1 << 20;
    let alone = loop {
        let out = h.event("abuse.work", json!({ "rounds": rounds })).await;
        assert!(out.result.is_ok(), "{:?}", out.result);
        if out.cpu >= budget / 5 || rounds >= 1 << 40 {
            break out.cpu;
        }
        rounds *= 2;
    };
    assert!(alone < budget / 2, "{alone:?} for {rounds} rounds");
    // The same work while sixteen threads spin on this machine's cores: it takes several times
    // as long (past the budget on two cores, where a meter of wall time would stop it), and is
    // still charged only what it ran.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..16)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x: u64 = 1;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    let started = Instant::now();
    let out = h.event("abuse.work", json!({ "rounds": rounds })).await;
    let wall = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    assert!(out.result.is_ok(), "{:?} after {wall:?}", out.result);
    assert!(
        out.cpu < budget / 2,
        "charged {:?} for work of {alone:?} (wall {wall:?})",
        out.cpu
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_work_a_plugin_asks_for_without_waiting_counts_against_its_cpu_budget() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    let budget = Duration::from_millis(100);
    let out = h.event("abuse.log_big", json!({})).await;
    let (reason, message) = trap_of(&out.result);
    // Not its wall time (1 s): the engine's reading of what it logs is charged to it.
    assert_eq!(reason, TrapReason::CpuBudget, "{message}");
    assert!(out.cpu >= budget, "stopped after {:?} of CPU", out.cpu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_its_memory_limit() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    let out = h.event("abuse.memory", json!({})).await;
    let (reason, message) = trap_of(&out.result);
    assert_eq!(reason, TrapReason::Memory, "{message}");
    assert!(message.contains("the limit is 16 MiB"), "{message}");
    assert!(out.memory_peak <= 16 << 20, "peak {}", out.memory_peak);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_overflows_the_guest_stack_not_the_host() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    let out = h.event("abuse.recurse", json!({})).await;
    let (reason, message) = trap_of(&out.result);
    assert_eq!(reason, TrapReason::StackOverflow, "{message}");
    // Large frames overflow the guest's own stack in linear memory first: still contained.
    let out = h.event("abuse.recurse_frames", json!({})).await;
    let (reason, message) = trap_of(&out.result);
    assert_eq!(reason, TrapReason::Fault);
    assert!(message.contains("out of bounds"), "{message}");
    let ok = h.event("abuse.ok", json!({})).await;
    assert!(
        ok.result.is_ok(),
        "the next invocation runs normally: {:?}",
        ok.result
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_trap_that_carries_the_panic_message() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    let out = h.event("abuse.panic", json!({})).await;
    let (reason, message) = trap_of(&out.result);
    assert_eq!(reason, TrapReason::Panic);
    // One line, nothing escaped: the API shows it as the plugin wrote it.
    assert!(
        message.starts_with("plugin panicked at tests/plugins/abuse/src/lib.rs:")
            && message.ends_with(": the abuse plugin panics on purpose")
            && !message.contains('\\'),
        "{message}"
    );
    let Err(Error::Trap { backtrace, .. }) = &out.result else {
        unreachable!()
    };
    assert!(
        backtrace
            .as_deref()
            .unwrap_or_default()
            .contains("trellis_fixture_abuse"),
        "{backtrace:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_output_is_refused() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    let out = h.http("GET", "/big", Vec::new()).await;
    match out.result {
        Err(Error::OutputTooLarge { bytes, limit }) => {
            assert_eq!(limit, 256 << 10);
            assert!(bytes > 2 << 20);
        }
        other => panic!("{other:?}"),
    }
    let small = h.http("GET", "/small", Vec::new()).await;
    assert!(small.result.is_ok(), "{:?}", small.result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_in_a_host_call_counts_against_the_wall_clock() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let h = Harness::start(&abuse(), options()).await.unwrap();
    // Another writer holds SQLite's write lock, so the plugin's kv write waits (up to the
    // database's busy timeout of 5 s) inside a host call, where the CPU budget does not run.
    let blocker = h.db.conn.begin().await.unwrap();
    blocker
        .execute_unprepared("INSERT INTO sandbox_state (namespace, key, value, updated_at) VALUES ('t', 'lock', '{}', '2026-01-01T00:00:00Z')")
        .await
        .unwrap();
    let started = Instant::now();
    let out = h.event("abuse.ok", json!({})).await;
    let elapsed = started.elapsed();
    blocker.rollback().await.unwrap();
    let (reason, message) = trap_of(&out.result);
    assert_eq!(reason, TrapReason::WallClock, "{message}");
    assert!(
        elapsed < Duration::from_secs(2),
        "the 1 s wall limit held for {elapsed:?}"
    );
    let ok = h.event("abuse.ok", json!({})).await;
    assert!(ok.result.is_ok(), "{:?}", ok.result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_waits_on_a_timer_is_stopped_when_it_tries() {
    // Timers link (an interpreter imports them unasked), but waiting on one stops the call.
    let sleeper = pack_plugin("tests/plugins/sleeper", "trellis_fixture_sleeper");
    let h = Harness::start(&sleeper, options()).await.unwrap();
    let started = Instant::now();
    let out = h.event("sleeper.nap", json!({})).await;
    let (reason, message) = trap_of(&out.result);
    assert_eq!(reason, TrapReason::HostLimit, "{message}");
    assert!(message.contains("may not sleep"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it did not wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_plugin_prints_joins_its_log_bounded_without_failing_the_call() {
    let h = Harness::start(&abuse(), options()).await.unwrap();
    let out = h.event("abuse.print_flood", json!({})).await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    let streams: Vec<(&str, &str)> = out
        .logs
        .iter()
        .map(|l| (l.message.as_str(), l.fields[0].1.as_str()))
        .take(2)
        .collect();
    assert_eq!(
        streams,
        [("out line 0", "stdout"), ("out line 1", "stdout")]
    );
    assert!(
        out.logs.len() <= 64,
        "bounded like any log: {}",
        out.logs.len()
    );
    assert!(out.logs_dropped > 0, "the rest is counted as dropped");
}
