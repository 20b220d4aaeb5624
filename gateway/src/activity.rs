//! How busy a session or a broker connection is, to decide whether it
//! keeps spare capacity.

/// How busy a session (or a broker connection) is: a busy one keeps the
/// capacity of its queues for the next message (no allocation per
/// message); one that is not gives it back after each step, so a sensor
/// that sends now and then costs only its state.
#[derive(Debug, Default, Clone, Copy)]
pub struct Activity {
    window: Option<std::time::Instant>,
    steps: u8,
}

/// Steps in one second beyond which a session counts as busy.
const BUSY_STEPS: u8 = 8;

impl Activity {
    /// Counts one step at `now`; true when the session is not busy (its
    /// spare capacity should be given back).
    pub fn step(&mut self, now: std::time::Instant) -> bool {
        match self.window {
            Some(start)
                if now.saturating_duration_since(start) < std::time::Duration::from_secs(1) =>
            {
                self.steps = self.steps.saturating_add(1);
            }
            _ => {
                self.window = Some(now);
                self.steps = 1;
            }
        }
        self.steps <= BUSY_STEPS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_steps_a_second_is_not_busy() {
        let t = std::time::Instant::now();
        let mut a = Activity::default();
        for i in 0..BUSY_STEPS {
            assert!(a.step(t + std::time::Duration::from_millis(u64::from(i))), "step {i}");
        }
        assert!(!a.step(t + std::time::Duration::from_millis(20)), "busy");
        assert!(a.step(t + std::time::Duration::from_millis(1500)), "a new second");
    }
}
