//! Where a job is in its life, as its status record's `state` field, the
//! API and the job lists of the web server name it.

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    /// In its queue, to be taken.
    Waiting,
    /// Due later (delayed, a retry, rate-limited).
    Scheduled,
    /// Taken by a daemon, which runs it.
    Running,
    /// Failed, with attempts left: due again later.
    Retrying,
    /// Done.
    Succeeded,
    /// In the dead letter list.
    Dead,
}

impl JobState {
    /// Every state.
    pub(crate) const ALL: [JobState; 6] = [
        JobState::Waiting,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Dead,
    ];

    /// Its name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
        }
    }

    /// The state named `name`, if any.
    pub(crate) fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_is_found_by_its_name() {
        for state in JobState::ALL {
            assert_eq!(JobState::named(state.as_str()), Some(state));
        }
        assert_eq!(JobState::named("inflight"), None);
    }
}
