//! The `qbdi` command. `qbdi run`, `qbdi call` and `qbdi plugin info` come with issue 4;
//! until then this binary says so and exits with status 2.

fn main() {
    eprintln!("qbdi: the command line host is not built yet (issue 4); use the qbdi-core library");
    std::process::exit(2);
}
