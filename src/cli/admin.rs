//! `surepush admin add-user | passwd | remove | list`: the admin UI's users, kept in
//! `<data_dir>/admin-users.json`. Works while the server runs (it re-reads the file).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;

use super::args::{AdminCommand, AdminUserArgs, ConfigArgs};
use crate::admin::users::{random_password, users_path, UsersFile};

pub fn run(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::AddUser(a) => {
            let path = path_of(&a.config)?;
            let mut file = UsersFile::load(&path)?;
            if file.find(&a.name).is_some() {
                anyhow::bail!(
                    "admin user {:?} already exists (use `surepush admin passwd`)",
                    a.name
                );
            }
            let password = password(&a)?;
            file.add(&a.name, &password)?;
            file.save(&path)?;
            println!("added admin user {:?} to {}", a.name, path.display());
        }
        AdminCommand::Passwd(a) => {
            let path = path_of(&a.config)?;
            let mut file = UsersFile::load(&path)?;
            if file.find(&a.name).is_none() {
                anyhow::bail!("no admin user {:?} in {}", a.name, path.display());
            }
            let password = password(&a)?;
            file.set_password(&a.name, &password)?;
            file.save(&path)?;
            println!("changed the password of {:?}", a.name);
        }
        AdminCommand::Remove(a) => {
            let path = path_of(&a.config)?;
            let mut file = UsersFile::load(&path)?;
            file.remove(&a.name)?;
            file.save(&path)?;
            println!("removed admin user {:?}", a.name);
        }
        AdminCommand::List(a) => {
            let path = path_of(&a.config)?;
            let file = UsersFile::load(&path)?;
            if file.users.is_empty() {
                println!("no admin users in {}", path.display());
            }
            for u in &file.users {
                println!(
                    "{}\tcreated {}",
                    u.name,
                    crate::store::record::rfc3339(u.created_ms)
                );
            }
        }
    }
    Ok(())
}

fn path_of(config: &ConfigArgs) -> anyhow::Result<std::path::PathBuf> {
    let (config, _) = super::serve::load(config)?;
    if !config.data_dir.is_dir() {
        anyhow::bail!(
            "data directory {} does not exist: run `surepush init` first, or pass --config / --data-dir",
            config.data_dir.display()
        );
    }
    Ok(users_path(&config.data_dir))
}

fn password(a: &AdminUserArgs) -> anyhow::Result<String> {
    if a.generate {
        let p = random_password();
        println!("password: {p}");
        return Ok(p);
    }
    let stdin = std::io::stdin();
    if a.password_stdin || !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    let first = prompt("New password: ")?;
    let second = prompt("Again: ")?;
    if first != second {
        anyhow::bail!("the passwords differ");
    }
    Ok(first)
}

/// Reads a line from the terminal without echoing it.
fn prompt(text: &str) -> anyhow::Result<String> {
    eprint!("{text}");
    std::io::stderr().flush().ok();
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is stdin, term a valid pointer.
    let have = unsafe { libc::tcgetattr(fd, &mut term) } == 0;
    let saved = term;
    if have {
        term.c_lflag &= !libc::ECHO;
        // SAFETY: as above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) };
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if have {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
