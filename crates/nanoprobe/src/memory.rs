//! The allocator and C library settings of the per-host agent: the second `unsafe` module in
//! assim (the first is `assim-capture`'s AF_PACKET calls).
//!
//! glibc's malloc gives every thread that allocates its own arena, and after a large buffer
//! is freed it raises its mmap threshold, so the next large buffers (a collector's file, a
//! result's JSON) come from an arena and stay resident after they are freed. For a daemon that
//! runs on every host and is idle almost all the time that is the wrong trade: measured with
//! `scripts/footprint`, these two settings take about 0.9 MB off the idle RSS.
//!
//! - one arena: the nanoprobe's runtime has one thread, and collectors and checks run briefly
//!   on blocking threads, so there is no lock contention worth an arena each;
//! - a fixed mmap threshold of 64 KiB: larger buffers are mapped and unmapped, and go back to
//!   the kernel as soon as they are freed;
//! - every 10 s (the metrics tick) [`release_free_memory`] hands whole free pages inside the
//!   heap back to the kernel (`malloc_trim`), so one long-lived allocation above a freed
//!   collector buffer does not keep that buffer's pages resident.
//!
//! The nanoprobe that the README installs is linked statically with glibc (`+crt-static`:
//! about 1.5 MB less resident than a dynamic one, docs/benchmarks.md). Such a process must not
//! load NSS modules: glibc would `dlopen` the module and a second, dynamic C library with it,
//! and `libnss_systemd` (Debian's default `passwd: files systemd`) crashes the process on the
//! first uid that /etc/passwd lacks. [`use_builtin_name_services`] keeps its lookups on the
//! sources built into glibc.
#![allow(unsafe_code)]

/// Applies the settings. Call once, first thing, before any thread is started. On a C library
/// other than glibc it does nothing.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` takes two integers and touches only malloc's own parameters; it is
        // called before the runtime starts any thread, as glibc's manual asks. A return of 0
        // (rejected) only leaves glibc's default in place, which is harmless.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        }
    }
}

/// Gives whole free pages of the heap back to the kernel. Cheap on the agent's small heap
/// (it walks the free lists once); the driver calls it on its 10-second metrics tick.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes an integer (the padding to keep) and only returns free
        // memory that malloc owns to the kernel; no pointer of ours is involved.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Name-service databases the nanoprobe uses, and the sources built into glibc it keeps them on:
/// user names of socket owners (`passwd`), groups for completeness, and the host names of TCP
/// checks (`hosts`: /etc/hosts, then the DNS servers of /etc/resolv.conf).
pub const BUILTIN_NAME_SERVICES: [(&str, &str); 3] =
    [("passwd", "files"), ("group", "files"), ("hosts", "files dns")];

/// Makes glibc answer user, group and host name lookups from [`BUILTIN_NAME_SERVICES`] only,
/// whatever /etc/nsswitch.conf lists, so no NSS module is ever loaded. For a statically linked
/// nanoprobe (`src/main.rs` calls it when built with `+crt-static`): users known only to LDAP,
/// sssd or systemd's dynamic users then show as a bare uid, and host names that only mDNS or
/// systemd-resolved's NSS module know do not resolve (DNS through resolved's stub still does).
/// Call once, first thing, before any thread is started. On a C library other than glibc it
/// does nothing.
pub fn use_builtin_name_services() -> Result<(), String> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            // glibc's <nss.h>: replaces the source list of one database for this process.
            fn __nss_configure_lookup(
                dbname: *const libc::c_char,
                service_line: *const libc::c_char,
            ) -> libc::c_int;
        }
        for (db, sources) in BUILTIN_NAME_SERVICES {
            let c_db = std::ffi::CString::new(db).map_err(|e| e.to_string())?;
            let c_sources = std::ffi::CString::new(sources).map_err(|e| e.to_string())?;
            // SAFETY: both pointers are NUL-terminated strings that outlive the call; glibc
            // copies what it keeps. Called before any thread starts, so no lookup runs
            // concurrently with the change.
            let r = unsafe { __nss_configure_lookup(c_db.as_ptr(), c_sources.as_ptr()) };
            if r != 0 {
                return Err(format!("glibc refused the name sources {sources:?} for {db}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_name_services_still_resolve_local_users_and_hosts() {
        use_builtin_name_services().unwrap();
        let root = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(0)).unwrap();
        assert_eq!(root.map(|u| u.name).as_deref(), Some("root"));
        // A uid that /etc/passwd does not list is no user, not an error or a crash.
        let unknown = (1_000_000..1_000_100)
            .find(|&u| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u)) == Ok(None));
        assert!(unknown.is_some(), "no unknown uid in 1,000,000..1,000,100");
        use std::net::ToSocketAddrs as _;
        let local = ("localhost", 1).to_socket_addrs().unwrap().collect::<Vec<_>>();
        assert!(local.iter().all(|a| a.ip().is_loopback()) && !local.is_empty(), "{local:?}");
    }
}
