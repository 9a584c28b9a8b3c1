//! The replay pace: how many spooled spans one flush replays, following
//! the collector (additive increase, multiplicative decrease, as Vector's
//! adaptive request concurrency and TCP do).
//!
//! A pure type. The window starts at [`Pace::new`]'s `initial` and, while
//! the collector takes everything a flush replays (the whole window used,
//! no congestion), doubles (slow start) until the first sign of
//! congestion, then grows by `initial` a flush. A flush that met
//! congestion (429, 503, a timeout: [`SendError::is_congestion`]) halves it,
//! never below `floor`. An outage (the collector failed most requests and
//! the exporter backs off) starts it over from `initial`, doubling again
//! ([`Pace::restart`]). `replay_budget_spans` is the ceiling, so an
//! operator can still cap it; the flush's time budget (`replay_budget_ms`)
//! bounds each flush whatever the window says.
//!
//! [`SendError::is_congestion`]: crate::transport::SendError::is_congestion

/// See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pace {
    window: usize,
    /// The window to start from, and the additive increase once
    /// congestion was seen.
    initial: usize,
    floor: usize,
    ceiling: usize,
    slow_start: bool,
}

impl Pace {
    /// A pace starting at `initial` spans a flush, between `floor` and
    /// `ceiling`.
    pub(crate) fn new(initial: usize, floor: usize, ceiling: usize) -> Pace {
        let ceiling = ceiling.max(1);
        let floor = floor.clamp(1, ceiling);
        let window = initial.clamp(floor, ceiling);
        Pace {
            window,
            initial: window,
            floor,
            ceiling,
            slow_start: true,
        }
    }

    /// Starts over from `initial`, doubling again (slow start), as TCP does
    /// after a timeout: the collector failed most requests (an outage), so
    /// what the window had learnt of its capacity no longer holds, and
    /// the congestion its failures showed says nothing of the pace it will
    /// take once back.
    pub(crate) fn restart(&mut self) {
        self.window = self.initial;
        self.slow_start = true;
    }

    /// Spans this flush may replay.
    pub(crate) fn window(&self) -> usize {
        self.window
    }

    /// After a flush: whether it used its whole window, and whether the
    /// collector showed congestion.
    pub(crate) fn update(&mut self, used_all: bool, congested: bool) {
        if congested {
            self.slow_start = false;
            self.window = (self.window / 2).max(self.floor);
        } else if used_all {
            let grown = if self.slow_start {
                self.window.saturating_mul(2)
            } else {
                self.window.saturating_add(self.initial)
            };
            self.window = grown.min(self.ceiling);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_doubles_until_congestion_halves_it_then_grows_by_a_step() {
        let mut p = Pace::new(8_192, 512, 1 << 20);
        p.update(true, false);
        p.update(true, false);
        assert_eq!(p.window(), 32_768);
        p.update(false, false);
        assert_eq!(p.window(), 32_768, "a flush that did not use it all leaves it");
        p.update(true, true);
        assert_eq!(p.window(), 16_384);
        p.update(true, false);
        assert_eq!(p.window(), 16_384 + 8_192, "additive after congestion");
        for _ in 0..20 {
            p.update(true, true);
        }
        assert_eq!(p.window(), 512, "never below the floor");
        for _ in 0..1_000 {
            p.update(true, false);
        }
        assert_eq!(p.window(), 1 << 20, "never above the ceiling");
    }

    #[test]
    fn after_an_outage_it_starts_over_and_doubles_again() {
        let mut p = Pace::new(1_024, 512, 1 << 20);
        for _ in 0..5 {
            p.update(false, true); // the outage's failures
        }
        assert_eq!(p.window(), 512);
        p.restart();
        assert_eq!(p.window(), 1_024);
        p.update(true, false);
        p.update(true, false);
        assert_eq!(p.window(), 4_096, "doubling, not additive");
    }

    #[test]
    fn an_operators_ceiling_below_the_start_wins() {
        let p = Pace::new(8_192, 512, 1_000);
        assert_eq!(p.window(), 1_000);
    }
}
