//! Which CPUs the processes of a run are pinned to.
//!
//! - Two CPUs (the reference machine): server on CPU 0; load generator on CPU 1; a proxy's
//!   upstream also on CPU 1, so that the proxy has its core to itself (the load side's
//!   saturation is then judged on load generator + upstream together).
//! - Three or more: as above, and the upstream on CPU 2.
//! - Scaling rows (four or more CPUs): the server on the first half of the CPUs with one
//!   thread/reactor per CPU, the load generator on the second half with one thread per CPU.

/// CPU sets of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) server: Vec<usize>,
    pub(crate) load: Vec<usize>,
    pub(crate) upstream: Vec<usize>,
}

impl Layout {
    /// One server CPU, one load CPU (and the upstream apart if there is a third CPU).
    pub(crate) fn single(ncpu: usize) -> Self {
        Self {
            server: vec![0],
            load: vec![1.min(ncpu.saturating_sub(1))],
            upstream: vec![if ncpu >= 3 {
                2
            } else {
                1.min(ncpu.saturating_sub(1))
            }],
        }
    }

    /// Half the CPUs for the server, half for the load; `None` below four CPUs.
    pub(crate) fn scaled(ncpu: usize) -> Option<Self> {
        if ncpu < 4 {
            return None;
        }
        let half = ncpu / 2;
        Some(Self {
            server: (0..half).collect(),
            load: (half..2 * half).collect(),
            upstream: (half..2 * half).collect(),
        })
    }

    /// The upstream shares the load generator's CPUs.
    pub(crate) fn upstream_on_load(&self) -> bool {
        self.upstream.iter().any(|c| self.load.contains(c))
    }
}

/// `[0, 1, 2, 5]` as `taskset -c` wants it: `0-2,5`.
pub(crate) fn list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let two = Layout::single(2);
        assert_eq!(
            (two.server, two.load.clone(), two.upstream),
            (vec![0], vec![1], vec![1])
        );
        assert!(Layout::single(2).upstream_on_load());
        assert!(!Layout::single(3).upstream_on_load());
        assert!(Layout::scaled(2).is_none());
        let s = Layout::scaled(8).unwrap();
        assert_eq!(
            (list(&s.server), list(&s.load)),
            ("0-3".into(), "4-7".into())
        );
        assert_eq!(list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }
}
