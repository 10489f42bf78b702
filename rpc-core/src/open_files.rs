//! The process's limit on open files, read where the system tells it without `unsafe`
//! (Linux: `/proc/self/limits`), to size the default cap on connections.

/// The soft limit on open file descriptors (`RLIMIT_NOFILE`), if the system tells it.
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

/// The soft "Max open files" value of a `/proc/<pid>/limits` text; `None` if absent or
/// unlimited.
fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    // "Max open files  <soft>  <hard>  files": the soft limit is the fourth word.
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_read_from_a_limits_table() {
        let table = "Limit                     Soft Limit           Hard Limit           Units     \n\
                     Max processes             95343                95343                processes \n\
                     Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(table), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), None);
        assert_eq!(parse_open_files_limit(""), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_limit_on_linux() {
        assert!(open_files_limit().is_some_and(|limit| limit > 0));
    }
}
