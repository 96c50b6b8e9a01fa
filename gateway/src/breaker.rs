//! A circuit breaker in front of an upstream: once calls keep failing, the
//! gateway stops making them for a cool-down, answers at once instead of
//! waiting for each to fail, and then lets a few trial calls find out
//! whether the upstream is back.
//!
//! ```text
//!            NWS_BREAKER_FAILURES in a row, or a failure
//!            rate of NWS_BREAKER_FAILURE_RATE or more over
//!            NWS_BREAKER_WINDOW (once it holds MIN_CALLS)
//!   closed ─────────────────────────────────────────────► open
//!     ▲                                                  │  ▲
//!     │ a trial succeeds            NWS_BREAKER_COOLDOWN │  │ a trial fails
//!     │                                                  ▼  │ (a new cool-down)
//!     └──────────────────────────────────────────── half-open
//!                       at most NWS_BREAKER_TRIAL_CALLS trials at once
//! ```
//!
//! The caller says what an outcome means ([`Outcome`]): only answers that
//! say the upstream cannot serve count as failures. A call the gateway
//! drops before it ends (its client left) counts as nothing.
//!
//! One std mutex guards the state; it is held for a few comparisons and
//! never across an `.await`. Open → half-open happens when someone next
//! looks (a call, `/readyz`), not on a timer. Time is
//! [`tokio::time::Instant`], so tests pause it.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use clap::Args;
use metrics::{Counter, Gauge};
use nws_runtime::{
    config::{InvalidSetting, parse_duration},
    telemetry::GATEWAY,
};
use tokio::time::Instant;

const DEFAULT_FAILURES: u32 = 5;
const DEFAULT_FAILURE_RATE: f64 = 0.5;
const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
const DEFAULT_MIN_CALLS: u32 = 10;
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(5);
const DEFAULT_TRIAL_CALLS: u32 = 3;

/// How long a call refused while every trial slot is taken is told to wait:
/// the trials under way decide within about one call's time.
const TRIALS_BUSY_RETRY: Duration = Duration::from_secs(1);

/// The breaker's settings; flags with `NWS_BREAKER_*` environment fallbacks.
#[derive(Debug, Clone, Args)]
pub struct BreakerConfig {
    /// Consecutive failed calls to the optimizer (unavailable, timed out,
    /// unknown errors, broken connections) that open its circuit breaker.
    #[arg(long = "breaker-failures", env = "NWS_BREAKER_FAILURES", default_value_t = DEFAULT_FAILURES, value_parser = parse_count)]
    pub failures: u32,

    /// Share of failed calls over NWS_BREAKER_WINDOW that opens the breaker
    /// (at or above it), in (0, 1], e.g. `0.5`.
    #[arg(long = "breaker-failure-rate", env = "NWS_BREAKER_FAILURE_RATE", default_value_t = DEFAULT_FAILURE_RATE, value_parser = parse_rate)]
    pub failure_rate: f64,

    /// The sliding window the failure rate is measured over, e.g. `10s`
    /// (kept in tenths: a call leaves it 0.9 to 1 window later).
    #[arg(long = "breaker-window", env = "NWS_BREAKER_WINDOW", default_value = "10s", value_parser = parse_window)]
    pub window: Duration,

    /// Calls the window must hold before its failure rate counts.
    #[arg(long = "breaker-min-calls", env = "NWS_BREAKER_MIN_CALLS", default_value_t = DEFAULT_MIN_CALLS, value_parser = parse_count)]
    pub min_calls: u32,

    /// How long an open breaker refuses calls before letting trials through.
    #[arg(long = "breaker-cooldown", env = "NWS_BREAKER_COOLDOWN", default_value = "5s", value_parser = parse_duration)]
    pub cooldown: Duration,

    /// Trial calls let through at once by a half-open breaker; the first
    /// to succeed closes it, the first to fail opens it again.
    #[arg(long = "breaker-trial-calls", env = "NWS_BREAKER_TRIAL_CALLS", default_value_t = DEFAULT_TRIAL_CALLS, value_parser = parse_count)]
    pub trial_calls: u32,
}

impl Default for BreakerConfig {
    /// The flags' defaults.
    fn default() -> Self {
        Self {
            failures: DEFAULT_FAILURES,
            failure_rate: DEFAULT_FAILURE_RATE,
            window: DEFAULT_WINDOW,
            min_calls: DEFAULT_MIN_CALLS,
            cooldown: DEFAULT_COOLDOWN,
            trial_calls: DEFAULT_TRIAL_CALLS,
        }
    }
}

impl BreakerConfig {
    /// The flags' checks again, for settings made in code; the error names
    /// the setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let checks = [
            ("NWS_BREAKER_FAILURES", check_count(self.failures)),
            ("NWS_BREAKER_FAILURE_RATE", check_rate(self.failure_rate)),
            ("NWS_BREAKER_WINDOW", check_window(self.window)),
            ("NWS_BREAKER_MIN_CALLS", check_count(self.min_calls)),
            ("NWS_BREAKER_TRIAL_CALLS", check_count(self.trial_calls)),
        ];
        for (setting, check) in checks {
            check.map_err(|message| InvalidSetting::new(setting, message))?;
        }
        Ok(())
    }
}

fn check_count(count: u32) -> Result<(), String> {
    if count >= 1 {
        Ok(())
    } else {
        Err("must be 1 or more".to_owned())
    }
}

fn check_rate(rate: f64) -> Result<(), String> {
    if rate > 0.0 && rate <= 1.0 {
        Ok(())
    } else {
        Err("must be a share in (0, 1], e.g. 0.5".to_owned())
    }
}

fn check_window(window: Duration) -> Result<(), String> {
    if window.is_zero() {
        Err("must be longer than 0, e.g. 10s".to_owned())
    } else {
        Ok(())
    }
}

fn parse_count(value: &str) -> Result<u32, String> {
    let count = value
        .trim()
        .parse()
        .map_err(|e| format!("not a whole number ({e})"))?;
    check_count(count).map(|()| count)
}

fn parse_rate(value: &str) -> Result<f64, String> {
    let rate = value.trim().parse().map_err(|e| format!("not a number ({e})"))?;
    check_rate(rate).map(|()| rate)
}

fn parse_window(value: &str) -> Result<Duration, String> {
    let window = parse_duration(value)?;
    check_window(window).map(|()| window)
}

/// What a finished call says about the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered: with a result, or with a refusal of this request.
    Success,
    /// It cannot serve: unavailable, out of time, failing, unreachable.
    Failure,
}

/// The breaker's state as `/readyz` and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }

    /// The `nws_breaker_state` gauge's value.
    fn gauge_value(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }
}

/// The breaker as seen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// While open: how long until trial calls go through.
    pub retry_in: Option<Duration>,
}

/// A call the breaker did not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// When asking again may pass: the rest of the cool-down, or a moment
    /// while every trial slot is taken.
    pub retry_after: Duration,
}

/// A circuit breaker; clones share one state.
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: &'static str,
    config: BreakerConfig,
    state: Mutex<Machine>,
    metrics: Metrics,
}

/// The state machine. `generation` changes with every transition: an
/// outcome is only heard in the generation its call was admitted in, so a
/// call that started before the breaker opened cannot close it later, nor
/// count twice.
struct Machine {
    phase: Phase,
    generation: u64,
    consecutive_failures: u32,
    window: Window,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { trials: u32 },
}

impl Phase {
    fn state(self) -> State {
        match self {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }
}

/// A transition, logged once the lock is released.
struct Transition {
    to: State,
    reason: String,
}

/// Handles made once, so the lock only ever covers atomic updates.
struct Metrics {
    state: Gauge,
    to_closed: Counter,
    to_half_open: Counter,
    to_open: Counter,
    rejected: Counter,
}

impl Metrics {
    fn new(upstream: &'static str) -> Self {
        let service = GATEWAY.name;
        let transitions = |to: State| {
            metrics::counter!(
                "nws_breaker_transitions_total",
                "service" => service,
                "upstream" => upstream,
                "to" => to.name()
            )
        };
        Self {
            state: metrics::gauge!("nws_breaker_state", "service" => service, "upstream" => upstream),
            to_closed: transitions(State::Closed),
            to_half_open: transitions(State::HalfOpen),
            to_open: transitions(State::Open),
            rejected: metrics::counter!(
                "nws_breaker_rejected_calls_total",
                "service" => service,
                "upstream" => upstream
            ),
        }
    }

    /// `# HELP` for the breaker's series.
    fn describe() {
        use metrics::{describe_counter, describe_gauge};
        describe_gauge!(
            "nws_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open"
        );
        describe_counter!(
            "nws_breaker_transitions_total",
            "Circuit breaker transitions per upstream, by the state entered"
        );
        describe_counter!(
            "nws_breaker_rejected_calls_total",
            "Calls the circuit breaker kept from the upstream (open, or no trial slot free)"
        );
    }

    fn entered(&self, state: State) {
        self.state.set(state.gauge_value());
        match state {
            State::Closed => self.to_closed.increment(1),
            State::HalfOpen => self.to_half_open.increment(1),
            State::Open => self.to_open.increment(1),
        }
    }
}

impl Breaker {
    /// A closed breaker for `upstream` (the `upstream` label of its series
    /// and log lines).
    pub fn new(upstream: &'static str, config: &BreakerConfig) -> Result<Self, InvalidSetting> {
        config.validate()?;
        Metrics::describe();
        let metrics = Metrics::new(upstream);
        metrics.state.set(State::Closed.gauge_value());
        Ok(Self {
            inner: Arc::new(Inner {
                upstream,
                config: config.clone(),
                state: Mutex::new(Machine {
                    phase: Phase::Closed,
                    generation: 0,
                    consecutive_failures: 0,
                    window: Window::new(Instant::now(), config.window),
                }),
                metrics,
            }),
        })
    }

    /// Lets a call through, or refuses it at once. The call's [`Outcome`]
    /// is reported through the returned [`Call`]; dropping it unreported
    /// (the call was abandoned) counts as nothing.
    pub fn admit(&self) -> Result<Call, Rejected> {
        let now = Instant::now();
        let (admitted, transition) = {
            let mut machine = self.lock();
            let transition = self.cool_down_over(&mut machine, now);
            let admitted = match &mut machine.phase {
                Phase::Closed => Ok(()),
                Phase::HalfOpen { trials } if *trials < self.inner.config.trial_calls => {
                    *trials += 1;
                    Ok(())
                }
                Phase::HalfOpen { .. } => Err(TRIALS_BUSY_RETRY),
                Phase::Open { until } => Err(until.saturating_duration_since(now)),
            };
            (admitted.map(|()| machine.generation), transition)
        };
        self.log(transition);
        match admitted {
            Ok(generation) => Ok(Call {
                breaker: self.clone(),
                generation,
                finished: false,
            }),
            Err(retry_after) => {
                self.inner.metrics.rejected.increment(1);
                Err(Rejected { retry_after })
            }
        }
    }

    /// Refuses what [`admit`](Self::admit) would refuse while open, without
    /// taking a trial slot: for work that only makes sense if a call can
    /// follow (reading an upload's body). A half-open breaker passes.
    pub fn check(&self) -> Result<(), Rejected> {
        match self.status() {
            Status {
                state: State::Open,
                retry_in: Some(retry_after),
            } => {
                self.inner.metrics.rejected.increment(1);
                Err(Rejected { retry_after })
            }
            _ => Ok(()),
        }
    }

    /// The state now (an open breaker whose cool-down is over turns
    /// half-open here).
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let (status, transition) = {
            let mut machine = self.lock();
            let transition = self.cool_down_over(&mut machine, now);
            let retry_in = match machine.phase {
                Phase::Open { until } => Some(until.saturating_duration_since(now)),
                Phase::Closed | Phase::HalfOpen { .. } => None,
            };
            let status = Status {
                state: machine.phase.state(),
                retry_in,
            };
            (status, transition)
        };
        self.log(transition);
        status
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        // Nothing panics while holding it; a poisoned lock still holds a
        // consistent state.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Open → half-open once the cool-down has passed.
    fn cool_down_over(&self, machine: &mut Machine, now: Instant) -> Option<Transition> {
        match machine.phase {
            Phase::Open { until } if now >= until => Some(self.enter(
                machine,
                Phase::HalfOpen { trials: 0 },
                "the cool-down is over".to_owned(),
            )),
            _ => None,
        }
    }

    /// Hears how a call of `generation` ended (`None`: abandoned).
    fn finish(&self, generation: u64, outcome: Option<Outcome>) {
        let now = Instant::now();
        let transition = {
            let mut machine = self.lock();
            if machine.generation != generation {
                return;
            }
            let config = &self.inner.config;
            match (machine.phase, outcome) {
                // Only trials run in a half-open generation.
                (Phase::HalfOpen { trials }, None) => {
                    machine.phase = Phase::HalfOpen {
                        trials: trials.saturating_sub(1),
                    };
                    None
                }
                (Phase::HalfOpen { .. }, Some(Outcome::Success)) => {
                    Some(self.enter(&mut machine, Phase::Closed, "a trial call succeeded".to_owned()))
                }
                (Phase::HalfOpen { .. }, Some(Outcome::Failure)) => Some(self.enter(
                    &mut machine,
                    Phase::Open {
                        until: now + config.cooldown,
                    },
                    "a trial call failed".to_owned(),
                )),
                (Phase::Closed, Some(Outcome::Success)) => {
                    machine.consecutive_failures = 0;
                    machine.window.record(now, false);
                    None
                }
                (Phase::Closed, Some(Outcome::Failure)) => {
                    machine.consecutive_failures += 1;
                    machine.window.record(now, true);
                    self.why_open(&machine, now).map(|reason| {
                        self.enter(
                            &mut machine,
                            Phase::Open {
                                until: now + config.cooldown,
                            },
                            reason,
                        )
                    })
                }
                // An open breaker admits nothing of its own generation.
                (Phase::Closed | Phase::Open { .. }, None) | (Phase::Open { .. }, Some(_)) => None,
            }
        };
        self.log(transition);
    }

    /// Whether a closed breaker's counts call for opening it, and why.
    fn why_open(&self, machine: &Machine, now: Instant) -> Option<String> {
        let config = &self.inner.config;
        if machine.consecutive_failures >= config.failures {
            return Some(format!(
                "{} consecutive failures (NWS_BREAKER_FAILURES)",
                machine.consecutive_failures
            ));
        }
        let (calls, failures) = machine.window.totals(now);
        let rate = f64::from(failures) / f64::from(calls.max(1));
        (calls >= config.min_calls && rate >= config.failure_rate).then(|| {
            format!(
                "failure rate {rate:.2} over {} ({failures} of {calls} calls; NWS_BREAKER_FAILURE_RATE)",
                humantime::format_duration(config.window)
            )
        })
    }

    /// Moves to `phase`, starting a new generation with fresh counts.
    fn enter(&self, machine: &mut Machine, phase: Phase, reason: String) -> Transition {
        machine.phase = phase;
        machine.generation += 1;
        machine.consecutive_failures = 0;
        machine.window.clear();
        let to = phase.state();
        self.inner.metrics.entered(to);
        Transition { to, reason }
    }

    fn log(&self, transition: Option<Transition>) {
        let Some(Transition { to, reason }) = transition else {
            return;
        };
        let upstream = self.inner.upstream;
        let config = &self.inner.config;
        match to {
            State::Open => tracing::warn!(
                upstream,
                %reason,
                cooldown = %humantime::format_duration(config.cooldown),
                "circuit breaker opened: calls are refused until the cool-down is over"
            ),
            State::HalfOpen => tracing::info!(
                upstream,
                %reason,
                trial_calls = config.trial_calls,
                "circuit breaker half-open: trial calls go through"
            ),
            State::Closed => tracing::info!(upstream, %reason, "circuit breaker closed"),
        }
    }
}

/// A call the breaker let through. Report how it ended with
/// [`finish`](Self::finish); dropped unreported, it counts as neither
/// success nor failure (and frees its trial slot).
pub struct Call {
    breaker: Breaker,
    generation: u64,
    finished: bool,
}

impl Call {
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.breaker.finish(self.generation, Some(outcome));
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.breaker.finish(self.generation, None);
        }
    }
}

/// Calls and failures over the last window, in tenths of it: the counts of
/// a tenth are dropped as a whole once it leaves the window, so memory
/// stays the same whatever the rate of calls.
struct Window {
    origin: Instant,
    /// Nanoseconds per tenth.
    tenth: u128,
    tenths: [Tenth; TENTHS],
}

const TENTHS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Tenth {
    /// Which tenth since `origin` these counts are of.
    index: u64,
    calls: u32,
    failures: u32,
}

impl Window {
    fn new(origin: Instant, window: Duration) -> Self {
        Self {
            origin,
            tenth: (window.as_nanos() / TENTHS as u128).max(1),
            tenths: [Tenth::default(); TENTHS],
        }
    }

    fn index(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.tenth).unwrap_or(u64::MAX)
    }

    fn record(&mut self, now: Instant, failed: bool) {
        let index = self.index(now);
        let slot = &mut self.tenths[(index % TENTHS as u64) as usize];
        if slot.index != index {
            *slot = Tenth {
                index,
                calls: 0,
                failures: 0,
            };
        }
        slot.calls = slot.calls.saturating_add(1);
        slot.failures = slot.failures.saturating_add(u32::from(failed));
    }

    /// (calls, failures) in the tenths that are still in the window.
    fn totals(&self, now: Instant) -> (u32, u32) {
        let index = self.index(now);
        self.tenths
            .iter()
            .filter(|slot| {
                index
                    .checked_sub(slot.index)
                    .is_some_and(|age| age < TENTHS as u64)
            })
            .fold((0, 0), |(calls, failures), slot| {
                (
                    calls.saturating_add(slot.calls),
                    failures.saturating_add(slot.failures),
                )
            })
    }

    fn clear(&mut self) {
        self.tenths = [Tenth::default(); TENTHS];
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tokio::time::advance;

    use super::{
        Outcome::{Failure as F, Success as S},
        *,
    };

    const COOLDOWN: Duration = Duration::from_secs(5);

    fn config() -> BreakerConfig {
        BreakerConfig {
            failures: 3,
            // The rate rule stays out of the way unless a test sets it.
            min_calls: 1000,
            cooldown: COOLDOWN,
            ..BreakerConfig::default()
        }
    }

    fn breaker_of(config: &BreakerConfig) -> Breaker {
        Breaker::new("optimizer", config).unwrap()
    }

    /// One call that ends with `outcome`.
    fn call(breaker: &Breaker, outcome: Outcome) {
        breaker.admit().expect("admitted").finish(outcome);
    }

    fn calls(breaker: &Breaker, outcomes: &[Outcome]) {
        for outcome in outcomes {
            call(breaker, *outcome);
        }
    }

    fn state(breaker: &Breaker) -> State {
        breaker.status().state
    }

    /// Opens `breaker` (made from [`config`]) by consecutive failures.
    fn open(breaker: &Breaker) {
        calls(breaker, &[F, F, F]);
        assert_eq!(state(breaker), State::Open);
    }

    /// Opens it, and waits out the cool-down.
    async fn half_open(breaker: &Breaker) {
        open(breaker);
        advance(COOLDOWN).await;
        assert_eq!(state(breaker), State::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_it_and_a_success_between_resets_the_count() {
        let breaker = breaker_of(&config());
        calls(&breaker, &[F, F, S, F, F]);
        assert_eq!(state(&breaker), State::Closed);
        call(&breaker, F);
        assert_eq!(
            breaker.status(),
            Status {
                state: State::Open,
                retry_in: Some(COOLDOWN)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn open_it_refuses_at_once_until_the_cool_down_is_over_then_turns_half_open() {
        let breaker = breaker_of(&config());
        open(&breaker);
        assert_eq!(
            breaker.admit().err(),
            Some(Rejected {
                retry_after: COOLDOWN
            })
        );
        advance(COOLDOWN - Duration::from_millis(300)).await;
        assert_eq!(
            breaker.admit().err(),
            Some(Rejected {
                retry_after: Duration::from_millis(300)
            })
        );
        assert_eq!(breaker.status().retry_in, Some(Duration::from_millis(300)));
        advance(Duration::from_millis(300)).await;
        assert!(breaker.admit().is_ok(), "a trial goes through");
        assert_eq!(
            breaker.status(),
            Status {
                state: State::HalfOpen,
                retry_in: None
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_it_lets_at_most_the_trial_calls_through_at_once() {
        let breaker = breaker_of(&BreakerConfig {
            trial_calls: 2,
            ..config()
        });
        half_open(&breaker).await;
        let first = breaker.admit().expect("first trial");
        let second = breaker.admit().expect("second trial");
        assert_eq!(
            breaker.admit().err(),
            Some(Rejected {
                retry_after: TRIALS_BUSY_RETRY
            })
        );
        // An abandoned trial frees its slot and decides nothing.
        drop(first);
        assert_eq!(state(&breaker), State::HalfOpen);
        let third = breaker.admit().expect("the freed slot");
        assert!(breaker.admit().is_err());
        drop((second, third));
        assert_eq!(state(&breaker), State::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_that_succeeds_closes_it_with_fresh_counts() {
        let breaker = breaker_of(&config());
        half_open(&breaker).await;
        let other_trial = breaker.admit().unwrap();
        call(&breaker, S);
        assert_eq!(state(&breaker), State::Closed);
        // The other trial of that half-open spell no longer counts.
        other_trial.finish(F);
        calls(&breaker, &[F, F]);
        assert_eq!(state(&breaker), State::Closed, "no failure carried over");
        call(&breaker, F);
        assert_eq!(state(&breaker), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_that_fails_opens_it_again_for_a_whole_new_cool_down() {
        let breaker = breaker_of(&config());
        half_open(&breaker).await;
        advance(Duration::from_secs(2)).await;
        call(&breaker, F);
        assert_eq!(
            breaker.status(),
            Status {
                state: State::Open,
                retry_in: Some(COOLDOWN)
            }
        );
        advance(COOLDOWN).await;
        assert_eq!(state(&breaker), State::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_rate_opens_it_once_the_window_holds_enough_calls() {
        let rate = BreakerConfig {
            failures: 100,
            failure_rate: 0.5,
            min_calls: 10,
            window: Duration::from_secs(10),
            ..config()
        };
        let breaker = breaker_of(&rate);
        // 4 of 9 failed: under the minimum of calls, and under the rate.
        calls(&breaker, &[S, F, S, F, S, F, S, F, S]);
        assert_eq!(state(&breaker), State::Closed);
        // 5 of 10: the rate is reached.
        call(&breaker, F);
        let status = breaker.status();
        assert_eq!(status.state, State::Open, "{status:?}");

        // 4 of 12 is under the rate.
        let below = breaker_of(&rate);
        calls(&below, &[S, S, F, S, S, F, S, S, F, S, S, F]);
        assert_eq!(state(&below), State::Closed);

        // Under the minimum of calls, even all failed is not enough.
        let few = breaker_of(&BreakerConfig { min_calls: 4, ..rate });
        calls(&few, &[F, F, F]);
        assert_eq!(state(&few), State::Closed);
        call(&few, F);
        assert_eq!(state(&few), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_leave_the_window() {
        let breaker = breaker_of(&BreakerConfig {
            failures: 100,
            failure_rate: 0.5,
            min_calls: 4,
            window: Duration::from_secs(10),
            ..config()
        });
        calls(&breaker, &[F, F, F]);
        // A window and a tenth later, those three are out of it.
        advance(Duration::from_secs(11)).await;
        call(&breaker, F);
        assert_eq!(state(&breaker), State::Closed, "one call in the window");
        advance(Duration::from_secs(5)).await;
        calls(&breaker, &[F, F]);
        assert_eq!(state(&breaker), State::Closed, "three calls in the window");
        call(&breaker, F);
        assert_eq!(state(&breaker), State::Open, "four, all failed");
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_calls_count_as_neither_success_nor_failure() {
        let breaker = breaker_of(&config());
        call(&breaker, F);
        for _ in 0..10 {
            drop(breaker.admit().unwrap());
        }
        call(&breaker, F);
        assert_eq!(state(&breaker), State::Closed);
        call(&breaker, F);
        assert_eq!(state(&breaker), State::Open, "the failures stayed consecutive");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_admitted_before_the_breaker_opened_decides_nothing_later() {
        let breaker = breaker_of(&config());
        let slow_success = breaker.admit().unwrap();
        let slow_failure = breaker.admit().unwrap();
        open(&breaker);
        slow_success.finish(S);
        assert_eq!(state(&breaker), State::Open);
        advance(COOLDOWN).await;
        assert_eq!(state(&breaker), State::HalfOpen);
        slow_failure.finish(F);
        assert_eq!(state(&breaker), State::HalfOpen, "not a trial");
    }

    #[tokio::test(start_paused = true)]
    async fn check_refuses_only_while_open_and_takes_no_trial_slot() {
        let breaker = breaker_of(&BreakerConfig {
            trial_calls: 1,
            ..config()
        });
        assert_eq!(breaker.check(), Ok(()));
        open(&breaker);
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            breaker.check(),
            Err(Rejected {
                retry_after: COOLDOWN - Duration::from_secs(1)
            })
        );
        advance(COOLDOWN).await;
        assert_eq!(breaker.check(), Ok(()));
        assert_eq!(breaker.check(), Ok(()));
        let trial = breaker.admit().expect("the one slot is still free");
        assert_eq!(breaker.check(), Ok(()), "half-open passes");
        trial.finish(S);
        assert_eq!(state(&breaker), State::Closed);
    }

    #[test]
    fn settings_are_checked_and_name_themselves() {
        assert_eq!(parse_count("3"), Ok(3));
        assert!(parse_count("0").unwrap_err().contains("1 or more"));
        assert!(parse_count("-1").is_err());
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        for bad in ["0", "-0.5", "1.01", "NaN", "half"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_window("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_window("0s").unwrap_err().contains("longer than 0"));

        assert!(BreakerConfig::default().validate().is_ok());
        let cases = [
            (
                BreakerConfig {
                    failures: 0,
                    ..BreakerConfig::default()
                },
                "NWS_BREAKER_FAILURES",
            ),
            (
                BreakerConfig {
                    failure_rate: 0.0,
                    ..BreakerConfig::default()
                },
                "NWS_BREAKER_FAILURE_RATE",
            ),
            (
                BreakerConfig {
                    window: Duration::ZERO,
                    ..BreakerConfig::default()
                },
                "NWS_BREAKER_WINDOW",
            ),
            (
                BreakerConfig {
                    min_calls: 0,
                    ..BreakerConfig::default()
                },
                "NWS_BREAKER_MIN_CALLS",
            ),
            (
                BreakerConfig {
                    trial_calls: 0,
                    ..BreakerConfig::default()
                },
                "NWS_BREAKER_TRIAL_CALLS",
            ),
        ];
        for (config, setting) in cases {
            let error = Breaker::new("optimizer", &config).err().expect(setting);
            assert_eq!(error.setting(), setting);
        }
    }

    #[test]
    fn the_flags_defaults_are_the_documented_ones() {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            breaker: BreakerConfig,
        }
        let parsed = Cli::try_parse_from(["gateway"]).unwrap().breaker;
        let default = BreakerConfig::default();
        assert_eq!(
            (
                parsed.failures,
                parsed.failure_rate,
                parsed.window,
                parsed.min_calls,
                parsed.cooldown,
                parsed.trial_calls
            ),
            (5, 0.5, Duration::from_secs(10), 10, Duration::from_secs(5), 3)
        );
        assert_eq!(
            (
                default.failures,
                default.failure_rate,
                default.window,
                default.min_calls,
                default.cooldown,
                default.trial_calls
            ),
            (5, 0.5, Duration::from_secs(10), 10, Duration::from_secs(5), 3)
        );
        let error = Cli::try_parse_from(["gateway", "--breaker-failure-rate", "2"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("(0, 1]"), "{error}");
    }
}
