//! `ddexp validate` and `ddexp schema`: experiment files and their schemas.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::spec;

pub fn validate(paths: &[PathBuf], overrides: &[String]) -> Result<()> {
    let mut files = vec![];
    for p in paths {
        match spec::experiment_files(p) {
            Ok(found) if found.is_empty() => {
                bail!("no .ron experiment files under {}", p.display())
            }
            Ok(found) => files.extend(found),
            Err(e) => bail!("cannot read {}: {e}", p.display()),
        }
    }
    let mut invalid = 0;
    for file in &files {
        // A sweep file is valid when it and every member it expands into are.
        let checked = if spec::sweep::is_sweep_file(file) {
            spec::sweep::load_grid(file, overrides).map(|grid| {
                let warnings: Vec<String> = grid
                    .members
                    .iter()
                    .map(|m| m.loaded.warnings.render())
                    .collect();
                (
                    dedup(warnings),
                    format!(" (sweep of {} members)", grid.members.len()),
                )
            })
        } else {
            spec::load(file, overrides).map(|loaded| (loaded.warnings.render(), String::new()))
        };
        match checked {
            Ok((warnings, what)) => {
                eout!("{warnings}");
                outln!("ok      {}{what}", file.display());
            }
            Err(e) => {
                invalid += 1;
                eout!("{}", e.render());
                outln!("invalid {}", file.display());
            }
        }
    }
    if invalid > 0 {
        bail!("{invalid} of {} experiment file(s) invalid", files.len());
    }
    Ok(())
}

/// The distinct texts, in first-seen order, joined: a grid's members share their warnings.
pub fn dedup(texts: Vec<String>) -> String {
    let mut seen = Vec::new();
    for t in texts {
        if !seen.contains(&t) {
            seen.push(t);
        }
    }
    seen.concat()
}

pub fn schema(check: bool, dir: &Path) -> Result<()> {
    if check {
        let stale = spec::schema::drift(dir);
        if !stale.is_empty() {
            let names: Vec<String> = stale.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "schema files out of date with the code: {}; run `ddexp schema` and commit the result",
                names.join(", ")
            );
        }
        outln!("schemas in {} are up to date", dir.display());
        return Ok(());
    }
    for path in spec::schema::write_all(dir)? {
        outln!("wrote {}", path.display());
    }
    Ok(())
}
