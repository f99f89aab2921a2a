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
        match spec::load(file, overrides) {
            Ok(loaded) => {
                eprint!("{}", loaded.warnings.render());
                println!("ok      {}", file.display());
            }
            Err(e) => {
                invalid += 1;
                eprint!("{}", e.render());
                println!("invalid {}", file.display());
            }
        }
    }
    if invalid > 0 {
        bail!("{invalid} of {} experiment file(s) invalid", files.len());
    }
    Ok(())
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
        println!("schemas in {} are up to date", dir.display());
        return Ok(());
    }
    for path in spec::schema::write_all(dir)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}
