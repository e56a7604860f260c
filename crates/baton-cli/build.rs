//! Build script of `baton`: records the git commit and the build date for `baton --version`.
//!
//! The commit comes from `git rev-parse --short HEAD` when the crate is built inside a git
//! checkout, and is "unknown" otherwise (a crate tarball, a source archive, no git installed).
//! The date is the UTC day of the build, or of `SOURCE_DATE_EPOCH` when set (reproducible
//! builds). Cargo reruns this script when HEAD or the branch it names moves.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    watch_git_head();
    println!("cargo:rustc-env=BATON_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=BATON_BUILD_DATE={}", build_date());
}

/// Runs git in the crate's folder; `None` when git is missing, fails, or prints nothing.
fn git(arguments: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(arguments)
        .current_dir(env_path("CARGO_MANIFEST_DIR")?)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).map(PathBuf::from)
}

/// Asks cargo to rerun this script when HEAD changes (a checkout) or the branch it points
/// at moves (a commit). Works for worktrees too: HEAD is in the worktree's git folder, the
/// branch in the common one.
fn watch_git_head() {
    let Some(manifest_dir) = env_path("CARGO_MANIFEST_DIR") else {
        return;
    };
    let absolute = |path: String| {
        let path = PathBuf::from(path);
        if path.is_absolute() {
            path
        } else {
            manifest_dir.join(path)
        }
    };
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(absolute) else {
        return;
    };
    let head = git_dir.join("HEAD");
    println!("cargo:rerun-if-changed={}", head.display());
    let common_dir = git(&["rev-parse", "--git-common-dir"])
        .map(absolute)
        .unwrap_or_else(|| git_dir.clone());
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        let loose = common_dir.join(&reference);
        if loose.exists() {
            println!("cargo:rerun-if-changed={}", loose.display());
        }
        let packed = common_dir.join("packed-refs");
        if packed.exists() {
            println!("cargo:rerun-if-changed={}", packed.display());
        }
    }
}

/// The build's UTC date, `YYYY-MM-DD`.
fn build_date() -> String {
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.trim().parse::<u64>().ok())
        .or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|elapsed| elapsed.as_secs())
        })
        .unwrap_or(0);
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
