fn main() -> std::process::ExitCode {
    keep_freed_memory();
    ddexp::cli::main()
}

/// Burn's CPU backend allocates a fresh buffer for nearly every tensor operation, many of
/// them megabytes. glibc's defaults serve such sizes with mmap and give them back to the
/// kernel when freed, so every training step faults and zeroes its whole working set again,
/// page by page. Serving allocations up to glibc's 32 MiB ceiling from the heap and never
/// trimming it lets each step reuse the previous step's memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters, and no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
