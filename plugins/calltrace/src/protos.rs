//! The built-in prototypes: how the arguments and the return value of common libc, libm and
//! libpthread functions are decoded (see [`crate::args`] for how each [`Ty`] is shown).
//!
//! Arguments are taken in the System V x86-64 order: integer and pointer arguments from
//! rdi, rsi, rdx, rcx, r8, r9; `double`/`float` ones from xmm0..xmm7. A function that is
//! not in [`TABLE`] is shown as before: its first three integer registers and rax in hex.
//!
//! Flag and constant values are Linux x86-64's (the kernel's and glibc's ABI).

/// How one argument or return value is decoded and shown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ty {
    /// No value (a return only): `<void>`.
    Void,
    /// `int` (the low 32 bits, signed decimal).
    Int,
    /// `unsigned int` (the low 32 bits, decimal).
    Uint,
    /// `long`, `ssize_t`, `off_t`, `time_t` (signed decimal).
    Long,
    /// `unsigned long` (decimal).
    Ulong,
    /// `size_t` (decimal).
    Size,
    /// An opaque word (hexadecimal).
    Hex,
    /// A pointer shown as an address (`NULL` for 0).
    Ptr,
    /// A NUL-terminated string (`char *`), quoted, cut after 32 bytes.
    Str,
    /// A character passed as an `int`: `'c'`.
    Char,
    /// A file descriptor (`int`).
    Fd,
    /// A directory file descriptor: `AT_FDCWD` for -100.
    DirFd,
    /// A file mode (octal).
    Mode,
    /// `open`'s optional mode (octal), shown only when the flags before it have `O_CREAT`
    /// or `O_TMPFILE` (otherwise the register holds nothing).
    OpenMode,
    /// A `double` (the next xmm register).
    Double,
    /// A `float` (the low 4 bytes of the next xmm register).
    Float,
    /// Bit flags (`int`), shown by name.
    Flags(&'static FlagSet),
    /// One of named constants.
    Enum(&'static EnumSet),
    /// A pointer to bytes whose count is the argument of that index (`write`'s buffer).
    Buf(u8),
    /// `fwrite`'s buffer: the next two arguments are the item size and count.
    Items,
    /// A `printf` format: the variadic arguments after it are decoded from it.
    Format,
    /// A `scanf` format: the variadic arguments after it are shown as pointers.
    ScanFormat,
}

impl Ty {
    /// The type's name (the `type` field of `format=jsonl`).
    pub fn name(self) -> &'static str {
        match self {
            Ty::Void => "void",
            Ty::Int => "int",
            Ty::Uint => "unsigned",
            Ty::Long => "long",
            Ty::Ulong => "unsigned long",
            Ty::Size => "size_t",
            Ty::Hex => "hex",
            Ty::Ptr => "pointer",
            Ty::Str => "string",
            Ty::Char => "char",
            Ty::Fd => "fd",
            Ty::DirFd => "dirfd",
            Ty::Mode | Ty::OpenMode => "mode",
            Ty::Double => "double",
            Ty::Float => "float",
            Ty::Flags(f) => f.name,
            Ty::Enum(e) => e.name,
            Ty::Buf(_) | Ty::Items => "buffer",
            Ty::Format => "format",
            Ty::ScanFormat => "scanf format",
        }
    }

    /// Whether the value comes from an xmm register rather than an integer one.
    pub fn is_float(self) -> bool {
        matches!(self, Ty::Double | Ty::Float)
    }
}

/// Named bits of an `int` argument.
#[derive(Debug, PartialEq)]
pub struct FlagSet {
    /// The type's name (`open_flags`).
    pub name: &'static str,
    /// A field of exclusive values (`O_ACCMODE`: mask, then the value names), shown first.
    pub field: Option<(u32, &'static [(u32, &'static str)])>,
    /// Flags, each one or more bits (a flag is shown when all its bits are set; earlier
    /// entries take their bits first).
    pub bits: &'static [(u32, &'static str)],
    /// What 0 is shown as when no field names it.
    pub zero: &'static str,
}

/// Named values of an argument.
#[derive(Debug, PartialEq)]
pub struct EnumSet {
    /// The type's name (`signal`).
    pub name: &'static str,
    /// The values and their names.
    pub values: &'static [(i64, &'static str)],
    /// Whether the argument is a full 64-bit word (a pointer); otherwise an `int`.
    pub wide: bool,
    /// Whether an unnamed value is shown in hexadecimal (otherwise decimal).
    pub hex: bool,
}

/// A function's prototype.
#[derive(Debug, PartialEq)]
pub struct Proto {
    /// The function's name.
    pub name: &'static str,
    /// What it returns.
    pub ret: Ty,
    /// Its fixed arguments.
    pub args: &'static [Ty],
}

/// The prototype of the function called `name`: a symbol name of the table or one of its
/// glibc aliases (`__isoc99_sscanf`, `__GI_strlen`).
pub fn lookup(name: &str) -> Option<&'static Proto> {
    let name = name.strip_prefix("__GI_").unwrap_or(name);
    let name = name
        .strip_prefix("__isoc99_")
        .or_else(|| name.strip_prefix("__isoc23_"))
        .unwrap_or(name);
    TABLE.iter().find(|p| p.name == name)
}

/// Flags of `open`, `openat`, `pipe2`, `dup3`, `fcntl(F_SETFL)`.
pub static OPEN_FLAGS: FlagSet = FlagSet {
    name: "open_flags",
    field: Some((0o3, &[(0, "O_RDONLY"), (1, "O_WRONLY"), (2, "O_RDWR")])),
    bits: &[
        (0o100, "O_CREAT"),
        (0o200, "O_EXCL"),
        (0o400, "O_NOCTTY"),
        (0o1000, "O_TRUNC"),
        (0o2000, "O_APPEND"),
        (0o4000, "O_NONBLOCK"),
        (0o4010000, "O_SYNC"),
        (0o10000, "O_DSYNC"),
        (0o20000, "O_ASYNC"),
        (0o40000, "O_DIRECT"),
        (0o100000, "O_LARGEFILE"),
        (0o20200000, "O_TMPFILE"),
        (0o200000, "O_DIRECTORY"),
        (0o400000, "O_NOFOLLOW"),
        (0o1000000, "O_NOATIME"),
        (0o2000000, "O_CLOEXEC"),
        (0o10000000, "O_PATH"),
    ],
    zero: "O_RDONLY",
};

/// `O_CREAT | O_TMPFILE`'s own bit: the open flags after which a mode is passed.
pub const OPEN_WITH_MODE: u32 = 0o100 | 0o20000000;

/// Memory protections of `mmap`, `mprotect`.
pub static PROT_FLAGS: FlagSet = FlagSet {
    name: "prot",
    field: None,
    bits: &[
        (0x1, "PROT_READ"),
        (0x2, "PROT_WRITE"),
        (0x4, "PROT_EXEC"),
        (0x8, "PROT_SEM"),
        (0x0100_0000, "PROT_GROWSDOWN"),
        (0x0200_0000, "PROT_GROWSUP"),
    ],
    zero: "PROT_NONE",
};

/// Flags of `mmap`.
pub static MAP_FLAGS: FlagSet = FlagSet {
    name: "map_flags",
    field: Some((
        0xf,
        &[
            (1, "MAP_SHARED"),
            (2, "MAP_PRIVATE"),
            (3, "MAP_SHARED_VALIDATE"),
        ],
    )),
    bits: &[
        (0x10, "MAP_FIXED"),
        (0x20, "MAP_ANONYMOUS"),
        (0x40, "MAP_32BIT"),
        (0x100, "MAP_GROWSDOWN"),
        (0x800, "MAP_DENYWRITE"),
        (0x1000, "MAP_EXECUTABLE"),
        (0x2000, "MAP_LOCKED"),
        (0x4000, "MAP_NORESERVE"),
        (0x8000, "MAP_POPULATE"),
        (0x10000, "MAP_NONBLOCK"),
        (0x20000, "MAP_STACK"),
        (0x40000, "MAP_HUGETLB"),
        (0x80000, "MAP_SYNC"),
        (0x100000, "MAP_FIXED_NOREPLACE"),
    ],
    zero: "0",
};

/// Modes of `access`, `faccessat`.
pub static ACCESS_MODE: FlagSet = FlagSet {
    name: "access_mode",
    field: None,
    bits: &[(4, "R_OK"), (2, "W_OK"), (1, "X_OK")],
    zero: "F_OK",
};

/// `AT_*` flags of the `*at` functions and `statx`.
pub static AT_FLAGS: FlagSet = FlagSet {
    name: "at_flags",
    field: None,
    bits: &[
        (0x100, "AT_SYMLINK_NOFOLLOW"),
        (0x200, "AT_REMOVEDIR"),
        (0x400, "AT_SYMLINK_FOLLOW"),
        (0x800, "AT_NO_AUTOMOUNT"),
        (0x1000, "AT_EMPTY_PATH"),
        (0x2000, "AT_STATX_FORCE_SYNC"),
        (0x4000, "AT_STATX_DONT_SYNC"),
    ],
    zero: "0",
};

/// Options of `waitpid`.
pub static WAIT_OPTIONS: FlagSet = FlagSet {
    name: "wait_options",
    field: None,
    bits: &[
        (1, "WNOHANG"),
        (2, "WUNTRACED"),
        (8, "WCONTINUED"),
        (0x2000_0000, "__WNOTHREAD"),
        (0x4000_0000, "__WALL"),
        (0x8000_0000, "__WCLONE"),
    ],
    zero: "0",
};

/// `socket`'s type and flags.
pub static SOCK_TYPE: FlagSet = FlagSet {
    name: "socket_type",
    field: Some((
        0xf,
        &[
            (1, "SOCK_STREAM"),
            (2, "SOCK_DGRAM"),
            (3, "SOCK_RAW"),
            (5, "SOCK_SEQPACKET"),
        ],
    )),
    bits: &[(0o4000, "SOCK_NONBLOCK"), (0o2000000, "SOCK_CLOEXEC")],
    zero: "0",
};

/// Signal numbers.
pub static SIGNAL: EnumSet = EnumSet {
    name: "signal",
    values: &[
        (1, "SIGHUP"),
        (2, "SIGINT"),
        (3, "SIGQUIT"),
        (4, "SIGILL"),
        (5, "SIGTRAP"),
        (6, "SIGABRT"),
        (7, "SIGBUS"),
        (8, "SIGFPE"),
        (9, "SIGKILL"),
        (10, "SIGUSR1"),
        (11, "SIGSEGV"),
        (12, "SIGUSR2"),
        (13, "SIGPIPE"),
        (14, "SIGALRM"),
        (15, "SIGTERM"),
        (16, "SIGSTKFLT"),
        (17, "SIGCHLD"),
        (18, "SIGCONT"),
        (19, "SIGSTOP"),
        (20, "SIGTSTP"),
        (21, "SIGTTIN"),
        (22, "SIGTTOU"),
        (23, "SIGURG"),
        (24, "SIGXCPU"),
        (25, "SIGXFSZ"),
        (26, "SIGVTALRM"),
        (27, "SIGPROF"),
        (28, "SIGWINCH"),
        (29, "SIGIO"),
        (30, "SIGPWR"),
        (31, "SIGSYS"),
    ],
    wide: false,
    hex: false,
};

/// A signal handler of `signal`: `SIG_DFL`, `SIG_IGN`, `SIG_ERR` or an address.
pub static SIG_HANDLER: EnumSet = EnumSet {
    name: "sighandler",
    values: &[(0, "SIG_DFL"), (1, "SIG_IGN"), (-1, "SIG_ERR")],
    wide: true,
    hex: true,
};

/// `how` of `sigprocmask`, `pthread_sigmask`.
pub static SIG_HOW: EnumSet = EnumSet {
    name: "sigmask_how",
    values: &[(0, "SIG_BLOCK"), (1, "SIG_UNBLOCK"), (2, "SIG_SETMASK")],
    wide: false,
    hex: false,
};

/// `whence` of `lseek`, `fseek`.
pub static WHENCE: EnumSet = EnumSet {
    name: "whence",
    values: &[
        (0, "SEEK_SET"),
        (1, "SEEK_CUR"),
        (2, "SEEK_END"),
        (3, "SEEK_DATA"),
        (4, "SEEK_HOLE"),
    ],
    wide: false,
    hex: false,
};

/// Locale categories of `setlocale`, `dcgettext`.
pub static LOCALE_CATEGORY: EnumSet = EnumSet {
    name: "locale_category",
    values: &[
        (0, "LC_CTYPE"),
        (1, "LC_NUMERIC"),
        (2, "LC_TIME"),
        (3, "LC_COLLATE"),
        (4, "LC_MONETARY"),
        (5, "LC_MESSAGES"),
        (6, "LC_ALL"),
        (7, "LC_PAPER"),
        (8, "LC_NAME"),
        (9, "LC_ADDRESS"),
        (10, "LC_TELEPHONE"),
        (11, "LC_MEASUREMENT"),
        (12, "LC_IDENTIFICATION"),
    ],
    wide: false,
    hex: false,
};

/// `nl_langinfo` items (the common ones; others in hexadecimal).
pub static NL_ITEM: EnumSet = EnumSet {
    name: "nl_item",
    values: &[
        (0xe, "CODESET"),
        (0x10000, "RADIXCHAR"),
        (0x10001, "THOUSEP"),
        (0x2002a, "D_T_FMT"),
        (0x2002b, "D_FMT"),
        (0x2002c, "T_FMT"),
        (0x2002d, "T_FMT_AMPM"),
        (0x50000, "YESEXPR"),
        (0x50001, "NOEXPR"),
    ],
    wide: false,
    hex: true,
};

/// Clocks of `clock_gettime`.
pub static CLOCK: EnumSet = EnumSet {
    name: "clock",
    values: &[
        (0, "CLOCK_REALTIME"),
        (1, "CLOCK_MONOTONIC"),
        (2, "CLOCK_PROCESS_CPUTIME_ID"),
        (3, "CLOCK_THREAD_CPUTIME_ID"),
        (4, "CLOCK_MONOTONIC_RAW"),
        (5, "CLOCK_REALTIME_COARSE"),
        (6, "CLOCK_MONOTONIC_COARSE"),
        (7, "CLOCK_BOOTTIME"),
    ],
    wide: false,
    hex: false,
};

/// Buffering modes of `setvbuf`.
pub static BUF_MODE: EnumSet = EnumSet {
    name: "buffer_mode",
    values: &[(0, "_IOFBF"), (1, "_IOLBF"), (2, "_IONBF")],
    wide: false,
    hex: false,
};

/// Commands of `fcntl`.
pub static FCNTL_CMD: EnumSet = EnumSet {
    name: "fcntl_cmd",
    values: &[
        (0, "F_DUPFD"),
        (1, "F_GETFD"),
        (2, "F_SETFD"),
        (3, "F_GETFL"),
        (4, "F_SETFL"),
        (5, "F_GETLK"),
        (6, "F_SETLK"),
        (7, "F_SETLKW"),
        (1030, "F_DUPFD_CLOEXEC"),
    ],
    wide: false,
    hex: false,
};

/// Requests of `ioctl` (terminal ones; others in hexadecimal).
pub static IOCTL_REQUEST: EnumSet = EnumSet {
    name: "ioctl_request",
    values: &[
        (0x5401, "TCGETS"),
        (0x5402, "TCSETS"),
        (0x5403, "TCSETSW"),
        (0x5404, "TCSETSF"),
        (0x540f, "TIOCGPGRP"),
        (0x5410, "TIOCSPGRP"),
        (0x5413, "TIOCGWINSZ"),
        (0x5414, "TIOCSWINSZ"),
        (0x541b, "FIONREAD"),
        (0x5421, "FIONBIO"),
    ],
    wide: false,
    hex: true,
};

/// Address families of `socket`.
pub static ADDRESS_FAMILY: EnumSet = EnumSet {
    name: "address_family",
    values: &[
        (0, "AF_UNSPEC"),
        (1, "AF_UNIX"),
        (2, "AF_INET"),
        (10, "AF_INET6"),
        (16, "AF_NETLINK"),
        (17, "AF_PACKET"),
    ],
    wide: false,
    hex: false,
};

use Ty::{
    Buf, Char, DirFd, Double, Fd, Float, Format, Hex, Int, Items, Long, Mode, OpenMode, Ptr,
    ScanFormat, Size, Str, Uint, Ulong, Void,
};

const OFLAGS: Ty = Ty::Flags(&OPEN_FLAGS);
const PROT: Ty = Ty::Flags(&PROT_FLAGS);
const MAPF: Ty = Ty::Flags(&MAP_FLAGS);
const AMODE: Ty = Ty::Flags(&ACCESS_MODE);
const ATF: Ty = Ty::Flags(&AT_FLAGS);
const WOPT: Ty = Ty::Flags(&WAIT_OPTIONS);
const SOCKT: Ty = Ty::Flags(&SOCK_TYPE);
const SIG: Ty = Ty::Enum(&SIGNAL);
const HANDLER: Ty = Ty::Enum(&SIG_HANDLER);
const HOW: Ty = Ty::Enum(&SIG_HOW);
const WHENCE_: Ty = Ty::Enum(&WHENCE);
const LC: Ty = Ty::Enum(&LOCALE_CATEGORY);
const NL: Ty = Ty::Enum(&NL_ITEM);
const CLK: Ty = Ty::Enum(&CLOCK);
const BUFM: Ty = Ty::Enum(&BUF_MODE);
const FCNTL: Ty = Ty::Enum(&FCNTL_CMD);
const IOCTL: Ty = Ty::Enum(&IOCTL_REQUEST);
const AF: Ty = Ty::Enum(&ADDRESS_FAMILY);

/// A table row: name, return type, arguments.
const fn p(name: &'static str, ret: Ty, args: &'static [Ty]) -> Proto {
    Proto { name, ret, args }
}

/// The prototypes, by area. `fork` returns in hexadecimal: the child's `0x0` is how the
/// traces have always marked it.
pub static TABLE: &[Proto] = &[
    // Strings.
    p("strlen", Size, &[Str]),
    p("strnlen", Size, &[Str, Size]),
    p("strcmp", Int, &[Str, Str]),
    p("strncmp", Int, &[Str, Str, Size]),
    p("strcasecmp", Int, &[Str, Str]),
    p("strncasecmp", Int, &[Str, Str, Size]),
    p("strcoll", Int, &[Str, Str]),
    p("strverscmp", Int, &[Str, Str]),
    p("strxfrm", Size, &[Ptr, Str, Size]),
    p("strcpy", Str, &[Ptr, Str]),
    p("stpcpy", Ptr, &[Ptr, Str]),
    p("strncpy", Ptr, &[Ptr, Str, Size]),
    p("stpncpy", Ptr, &[Ptr, Str, Size]),
    p("strcat", Str, &[Str, Str]),
    p("strncat", Str, &[Str, Str, Size]),
    p("strchr", Str, &[Str, Char]),
    p("strrchr", Str, &[Str, Char]),
    p("strchrnul", Str, &[Str, Char]),
    p("strstr", Str, &[Str, Str]),
    p("strcasestr", Str, &[Str, Str]),
    p("strpbrk", Str, &[Str, Str]),
    p("strspn", Size, &[Str, Str]),
    p("strcspn", Size, &[Str, Str]),
    p("strdup", Str, &[Str]),
    p("strndup", Str, &[Str, Size]),
    p("strtok", Str, &[Str, Str]),
    p("strtok_r", Str, &[Str, Str, Ptr]),
    p("strsep", Str, &[Ptr, Str]),
    p("strerror", Str, &[Int]),
    p("strsignal", Str, &[SIG]),
    p("strtol", Long, &[Str, Ptr, Int]),
    p("strtoul", Ulong, &[Str, Ptr, Int]),
    p("strtoll", Long, &[Str, Ptr, Int]),
    p("strtoull", Ulong, &[Str, Ptr, Int]),
    p("strtoimax", Long, &[Str, Ptr, Int]),
    p("strtoumax", Ulong, &[Str, Ptr, Int]),
    p("strtod", Double, &[Str, Ptr]),
    p("strtof", Float, &[Str, Ptr]),
    p("atoi", Int, &[Str]),
    p("atol", Long, &[Str]),
    p("atoll", Long, &[Str]),
    p("atof", Double, &[Str]),
    p("toupper", Char, &[Char]),
    p("tolower", Char, &[Char]),
    p("basename", Str, &[Str]),
    p("dirname", Str, &[Str]),
    // Memory.
    p("malloc", Ptr, &[Size]),
    p("calloc", Ptr, &[Size, Size]),
    p("realloc", Ptr, &[Ptr, Size]),
    p("reallocarray", Ptr, &[Ptr, Size, Size]),
    p("free", Void, &[Ptr]),
    p("aligned_alloc", Ptr, &[Size, Size]),
    p("memalign", Ptr, &[Size, Size]),
    p("posix_memalign", Int, &[Ptr, Size, Size]),
    p("memcpy", Ptr, &[Ptr, Ptr, Size]),
    p("mempcpy", Ptr, &[Ptr, Ptr, Size]),
    p("memmove", Ptr, &[Ptr, Ptr, Size]),
    p("memset", Ptr, &[Ptr, Char, Size]),
    p("memcmp", Int, &[Buf(2), Buf(2), Size]),
    p("memchr", Ptr, &[Ptr, Char, Size]),
    p("memrchr", Ptr, &[Ptr, Char, Size]),
    p("qsort", Void, &[Ptr, Size, Size, Ptr]),
    p("bsearch", Ptr, &[Ptr, Ptr, Size, Size, Ptr]),
    // Standard I/O.
    p("fopen", Ptr, &[Str, Str]),
    p("fopen64", Ptr, &[Str, Str]),
    p("fdopen", Ptr, &[Fd, Str]),
    p("freopen", Ptr, &[Str, Str, Ptr]),
    p("fclose", Int, &[Ptr]),
    p("fread", Size, &[Ptr, Size, Size, Ptr]),
    p("fread_unlocked", Size, &[Ptr, Size, Size, Ptr]),
    p("fwrite", Size, &[Items, Size, Size, Ptr]),
    p("fwrite_unlocked", Size, &[Items, Size, Size, Ptr]),
    p("fputs", Int, &[Str, Ptr]),
    p("fputs_unlocked", Int, &[Str, Ptr]),
    p("puts", Int, &[Str]),
    p("fputc", Int, &[Char, Ptr]),
    p("fputc_unlocked", Int, &[Char, Ptr]),
    p("putc", Int, &[Char, Ptr]),
    p("putc_unlocked", Int, &[Char, Ptr]),
    p("putchar", Int, &[Char]),
    p("putchar_unlocked", Int, &[Char]),
    p("fgetc", Int, &[Ptr]),
    p("getc", Int, &[Ptr]),
    p("getchar", Int, &[]),
    p("ungetc", Int, &[Char, Ptr]),
    p("fgets", Str, &[Ptr, Int, Ptr]),
    p("getline", Long, &[Ptr, Ptr, Ptr]),
    p("getdelim", Long, &[Ptr, Ptr, Char, Ptr]),
    p("fflush", Int, &[Ptr]),
    p("fflush_unlocked", Int, &[Ptr]),
    p("fileno", Fd, &[Ptr]),
    p("feof", Int, &[Ptr]),
    p("ferror", Int, &[Ptr]),
    p("clearerr", Void, &[Ptr]),
    p("fseek", Int, &[Ptr, Long, WHENCE_]),
    p("fseeko", Int, &[Ptr, Long, WHENCE_]),
    p("ftell", Long, &[Ptr]),
    p("ftello", Long, &[Ptr]),
    p("rewind", Void, &[Ptr]),
    p("setvbuf", Int, &[Ptr, Ptr, BUFM, Size]),
    p("setbuf", Void, &[Ptr, Ptr]),
    p("__fpending", Size, &[Ptr]),
    p("__freading", Int, &[Ptr]),
    p("perror", Void, &[Str]),
    p("popen", Ptr, &[Str, Str]),
    p("pclose", Int, &[Ptr]),
    p("remove", Int, &[Str]),
    p("rename", Int, &[Str, Str]),
    p("printf", Int, &[Format]),
    p("fprintf", Int, &[Ptr, Format]),
    p("dprintf", Int, &[Fd, Format]),
    p("sprintf", Int, &[Ptr, Format]),
    p("snprintf", Int, &[Ptr, Size, Format]),
    p("asprintf", Int, &[Ptr, Format]),
    p("vprintf", Int, &[Str, Ptr]),
    p("vfprintf", Int, &[Ptr, Str, Ptr]),
    p("vsprintf", Int, &[Ptr, Str, Ptr]),
    p("vsnprintf", Int, &[Ptr, Size, Str, Ptr]),
    p("vasprintf", Int, &[Ptr, Str, Ptr]),
    p("sscanf", Int, &[Str, ScanFormat]),
    p("fscanf", Int, &[Ptr, ScanFormat]),
    p("scanf", Int, &[ScanFormat]),
    p("error", Void, &[Int, Int, Format]),
    p("warn", Void, &[Format]),
    p("warnx", Void, &[Format]),
    p("err", Void, &[Int, Format]),
    p("errx", Void, &[Int, Format]),
    p("syslog", Void, &[Int, Format]),
    // Fortified (`_FORTIFY_SOURCE`) variants.
    p("__printf_chk", Int, &[Int, Format]),
    p("__fprintf_chk", Int, &[Ptr, Int, Format]),
    p("__dprintf_chk", Int, &[Fd, Int, Format]),
    p("__sprintf_chk", Int, &[Ptr, Int, Size, Format]),
    p("__snprintf_chk", Int, &[Ptr, Size, Int, Size, Format]),
    p("__asprintf_chk", Int, &[Ptr, Int, Format]),
    p("__vprintf_chk", Int, &[Int, Str, Ptr]),
    p("__vfprintf_chk", Int, &[Ptr, Int, Str, Ptr]),
    p("__vsprintf_chk", Int, &[Ptr, Int, Size, Str, Ptr]),
    p("__vsnprintf_chk", Int, &[Ptr, Size, Int, Size, Str, Ptr]),
    p("__memcpy_chk", Ptr, &[Ptr, Ptr, Size, Size]),
    p("__mempcpy_chk", Ptr, &[Ptr, Ptr, Size, Size]),
    p("__memmove_chk", Ptr, &[Ptr, Ptr, Size, Size]),
    p("__memset_chk", Ptr, &[Ptr, Char, Size, Size]),
    p("__strcpy_chk", Str, &[Ptr, Str, Size]),
    p("__stpcpy_chk", Ptr, &[Ptr, Str, Size]),
    p("__strncpy_chk", Ptr, &[Ptr, Str, Size, Size]),
    p("__strcat_chk", Str, &[Str, Str, Size]),
    p("__strncat_chk", Str, &[Str, Str, Size, Size]),
    p("__fgets_chk", Str, &[Ptr, Size, Int, Ptr]),
    p("__read_chk", Long, &[Fd, Ptr, Size, Size]),
    p("__getcwd_chk", Str, &[Ptr, Size, Size]),
    p("__realpath_chk", Str, &[Str, Ptr, Size]),
    p("__readlink_chk", Long, &[Str, Ptr, Size, Size]),
    p("__longjmp_chk", Void, &[Ptr, Int]),
    p("__stack_chk_fail", Void, &[]),
    // glibc internals that programs call.
    p("__errno_location", Ptr, &[]),
    p("__ctype_b_loc", Ptr, &[]),
    p("__ctype_tolower_loc", Ptr, &[]),
    p("__ctype_toupper_loc", Ptr, &[]),
    p("__ctype_get_mb_cur_max", Size, &[]),
    p("__cxa_atexit", Int, &[Ptr, Ptr, Ptr]),
    p("__cxa_finalize", Void, &[Ptr]),
    // Multibyte and wide characters.
    p("mbstowcs", Size, &[Ptr, Str, Size]),
    p("mbrtowc", Size, &[Ptr, Buf(2), Size, Ptr]),
    p("mbsinit", Int, &[Ptr]),
    p("wcwidth", Int, &[Hex]),
    p("wcswidth", Int, &[Ptr, Size]),
    p("iswprint", Int, &[Hex]),
    // Environment, locale, messages.
    p("getenv", Str, &[Str]),
    p("secure_getenv", Str, &[Str]),
    p("setenv", Int, &[Str, Str, Int]),
    p("unsetenv", Int, &[Str]),
    p("putenv", Int, &[Str]),
    p("setlocale", Str, &[LC, Str]),
    p("localeconv", Ptr, &[]),
    p("nl_langinfo", Str, &[NL]),
    p("bindtextdomain", Str, &[Str, Str]),
    p("bind_textdomain_codeset", Str, &[Str, Str]),
    p("textdomain", Str, &[Str]),
    p("gettext", Str, &[Str]),
    p("dgettext", Str, &[Str, Str]),
    p("dcgettext", Str, &[Str, Str, LC]),
    p("ngettext", Str, &[Str, Str, Ulong]),
    p("dngettext", Str, &[Str, Str, Str, Ulong]),
    p("dcngettext", Str, &[Str, Str, Str, Ulong, LC]),
    p("getopt", Int, &[Int, Ptr, Str]),
    p("getopt_long", Int, &[Int, Ptr, Str, Ptr, Ptr]),
    // Files and directories.
    p("open", Fd, &[Str, OFLAGS, OpenMode]),
    p("open64", Fd, &[Str, OFLAGS, OpenMode]),
    p("openat", Fd, &[DirFd, Str, OFLAGS, OpenMode]),
    p("openat64", Fd, &[DirFd, Str, OFLAGS, OpenMode]),
    p("creat", Fd, &[Str, Mode]),
    p("close", Int, &[Fd]),
    p("read", Long, &[Fd, Ptr, Size]),
    p("write", Long, &[Fd, Buf(2), Size]),
    p("pread64", Long, &[Fd, Ptr, Size, Long]),
    p("pwrite64", Long, &[Fd, Buf(2), Size, Long]),
    p("lseek", Long, &[Fd, Long, WHENCE_]),
    p("lseek64", Long, &[Fd, Long, WHENCE_]),
    p("dup", Fd, &[Fd]),
    p("dup2", Fd, &[Fd, Fd]),
    p("dup3", Fd, &[Fd, Fd, OFLAGS]),
    p("pipe", Int, &[Ptr]),
    p("pipe2", Int, &[Ptr, OFLAGS]),
    p("fcntl", Int, &[Fd, FCNTL, Hex]),
    p("ioctl", Int, &[Fd, IOCTL, Ptr]),
    p("stat", Int, &[Str, Ptr]),
    p("lstat", Int, &[Str, Ptr]),
    p("fstat", Int, &[Fd, Ptr]),
    p("stat64", Int, &[Str, Ptr]),
    p("lstat64", Int, &[Str, Ptr]),
    p("fstat64", Int, &[Fd, Ptr]),
    p("fstatat", Int, &[DirFd, Str, Ptr, ATF]),
    p("fstatat64", Int, &[DirFd, Str, Ptr, ATF]),
    p("statx", Int, &[DirFd, Str, ATF, Hex, Ptr]),
    p("__xstat", Int, &[Int, Str, Ptr]),
    p("__lxstat", Int, &[Int, Str, Ptr]),
    p("__fxstat", Int, &[Int, Fd, Ptr]),
    p("access", Int, &[Str, AMODE]),
    p("faccessat", Int, &[DirFd, Str, AMODE, ATF]),
    p("euidaccess", Int, &[Str, AMODE]),
    p("unlink", Int, &[Str]),
    p("unlinkat", Int, &[DirFd, Str, ATF]),
    p("rmdir", Int, &[Str]),
    p("mkdir", Int, &[Str, Mode]),
    p("mkdirat", Int, &[DirFd, Str, Mode]),
    p("chdir", Int, &[Str]),
    p("fchdir", Int, &[Fd]),
    p("getcwd", Str, &[Ptr, Size]),
    p("readlink", Long, &[Str, Ptr, Size]),
    p("readlinkat", Long, &[DirFd, Str, Ptr, Size]),
    p("realpath", Str, &[Str, Ptr]),
    p("symlink", Int, &[Str, Str]),
    p("link", Int, &[Str, Str]),
    p("chmod", Int, &[Str, Mode]),
    p("fchmod", Int, &[Fd, Mode]),
    p("chown", Int, &[Str, Uint, Uint]),
    p("truncate", Int, &[Str, Long]),
    p("ftruncate", Int, &[Fd, Long]),
    p("umask", Mode, &[Mode]),
    p("fsync", Int, &[Fd]),
    p("isatty", Int, &[Fd]),
    p("opendir", Ptr, &[Str]),
    p("fdopendir", Ptr, &[Fd]),
    p("readdir", Ptr, &[Ptr]),
    p("readdir64", Ptr, &[Ptr]),
    p("closedir", Int, &[Ptr]),
    p("dirfd", Fd, &[Ptr]),
    p("getxattr", Long, &[Str, Str, Ptr, Size]),
    p("lgetxattr", Long, &[Str, Str, Ptr, Size]),
    // Processes and signals.
    p("exit", Void, &[Int]),
    p("_exit", Void, &[Int]),
    p("_Exit", Void, &[Int]),
    p("abort", Void, &[]),
    p("atexit", Int, &[Ptr]),
    p("getpid", Int, &[]),
    p("getppid", Int, &[]),
    p("gettid", Int, &[]),
    p("getuid", Uint, &[]),
    p("geteuid", Uint, &[]),
    p("getgid", Uint, &[]),
    p("getegid", Uint, &[]),
    p("getpwuid", Ptr, &[Uint]),
    p("getgrgid", Ptr, &[Uint]),
    p("getpwnam", Ptr, &[Str]),
    p("getgrnam", Ptr, &[Str]),
    p("fork", Hex, &[]),
    p("vfork", Int, &[]),
    p("execve", Int, &[Str, Ptr, Ptr]),
    p("execv", Int, &[Str, Ptr]),
    p("execvp", Int, &[Str, Ptr]),
    p("system", Int, &[Str]),
    p("wait", Int, &[Ptr]),
    p("waitpid", Int, &[Int, Ptr, WOPT]),
    p("kill", Int, &[Int, SIG]),
    p("raise", Int, &[SIG]),
    p("signal", HANDLER, &[SIG, HANDLER]),
    p("sigaction", Int, &[SIG, Ptr, Ptr]),
    p("sigprocmask", Int, &[HOW, Ptr, Ptr]),
    p("sigemptyset", Int, &[Ptr]),
    p("sigaddset", Int, &[Ptr, SIG]),
    p("alarm", Uint, &[Uint]),
    p("sleep", Uint, &[Uint]),
    p("usleep", Int, &[Uint]),
    p("_setjmp", Int, &[Ptr]),
    p("setjmp", Int, &[Ptr]),
    p("__sigsetjmp", Int, &[Ptr, Int]),
    p("longjmp", Void, &[Ptr, Int]),
    p("_longjmp", Void, &[Ptr, Int]),
    p("siglongjmp", Void, &[Ptr, Int]),
    // Memory maps.
    p("mmap", Ptr, &[Ptr, Size, PROT, MAPF, Fd, Long]),
    p("mmap64", Ptr, &[Ptr, Size, PROT, MAPF, Fd, Long]),
    p("munmap", Int, &[Ptr, Size]),
    p("mprotect", Int, &[Ptr, Size, PROT]),
    p("madvise", Int, &[Ptr, Size, Int]),
    // Sockets.
    p("socket", Fd, &[AF, SOCKT, Int]),
    p("connect", Int, &[Fd, Ptr, Uint]),
    p("bind", Int, &[Fd, Ptr, Uint]),
    p("listen", Int, &[Fd, Int]),
    p("accept", Fd, &[Fd, Ptr, Ptr]),
    p("send", Long, &[Fd, Buf(2), Size, Int]),
    p("recv", Long, &[Fd, Ptr, Size, Int]),
    // Time.
    p("time", Long, &[Ptr]),
    p("clock", Long, &[]),
    p("clock_gettime", Int, &[CLK, Ptr]),
    p("gettimeofday", Int, &[Ptr, Ptr]),
    p("localtime", Ptr, &[Ptr]),
    p("localtime_r", Ptr, &[Ptr, Ptr]),
    p("gmtime", Ptr, &[Ptr]),
    p("gmtime_r", Ptr, &[Ptr, Ptr]),
    p("mktime", Long, &[Ptr]),
    p("strftime", Size, &[Ptr, Size, Str, Ptr]),
    p("difftime", Double, &[Long, Long]),
    p("nanosleep", Int, &[Ptr, Ptr]),
    // Threads.
    p("pthread_create", Int, &[Ptr, Ptr, Ptr, Ptr]),
    p("pthread_join", Int, &[Hex, Ptr]),
    p("pthread_detach", Int, &[Hex]),
    p("pthread_self", Hex, &[]),
    p("pthread_exit", Void, &[Ptr]),
    p("pthread_mutex_init", Int, &[Ptr, Ptr]),
    p("pthread_mutex_destroy", Int, &[Ptr]),
    p("pthread_mutex_lock", Int, &[Ptr]),
    p("pthread_mutex_trylock", Int, &[Ptr]),
    p("pthread_mutex_unlock", Int, &[Ptr]),
    p("pthread_cond_wait", Int, &[Ptr, Ptr]),
    p("pthread_cond_signal", Int, &[Ptr]),
    p("pthread_cond_broadcast", Int, &[Ptr]),
    p("pthread_once", Int, &[Ptr, Ptr]),
    p("pthread_key_create", Int, &[Ptr, Ptr]),
    p("pthread_getspecific", Ptr, &[Uint]),
    p("pthread_setspecific", Int, &[Uint, Ptr]),
    p("pthread_sigmask", Int, &[HOW, Ptr, Ptr]),
    // libm.
    p("sin", Double, &[Double]),
    p("cos", Double, &[Double]),
    p("tan", Double, &[Double]),
    p("asin", Double, &[Double]),
    p("acos", Double, &[Double]),
    p("atan", Double, &[Double]),
    p("atan2", Double, &[Double, Double]),
    p("sqrt", Double, &[Double]),
    p("cbrt", Double, &[Double]),
    p("pow", Double, &[Double, Double]),
    p("exp", Double, &[Double]),
    p("exp2", Double, &[Double]),
    p("log", Double, &[Double]),
    p("log2", Double, &[Double]),
    p("log10", Double, &[Double]),
    p("floor", Double, &[Double]),
    p("ceil", Double, &[Double]),
    p("round", Double, &[Double]),
    p("trunc", Double, &[Double]),
    p("fabs", Double, &[Double]),
    p("fmod", Double, &[Double, Double]),
    p("hypot", Double, &[Double, Double]),
    p("ldexp", Double, &[Double, Int]),
    p("frexp", Double, &[Double, Ptr]),
    p("modf", Double, &[Double, Ptr]),
    p("sinf", Float, &[Float]),
    p("cosf", Float, &[Float]),
    p("sqrtf", Float, &[Float]),
    p("powf", Float, &[Float, Float]),
    p("expf", Float, &[Float]),
    p("logf", Float, &[Float]),
    p("floorf", Float, &[Float]),
    p("ceilf", Float, &[Float]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_consistent() {
        let mut names: Vec<&str> = TABLE.iter().map(|p| p.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a function is listed twice");
        assert!(n >= 150, "{n} prototypes");
        for p in TABLE {
            let ints = p.args.iter().filter(|t| !t.is_float()).count();
            let floats = p.args.len() - ints;
            assert!(ints <= 6 && floats <= 8, "{}: too many arguments", p.name);
            assert!(!p.args.contains(&Void), "{}: a void argument", p.name);
            for (i, t) in p.args.iter().enumerate() {
                match t {
                    Buf(n) => assert!(
                        usize::from(*n) < p.args.len() && usize::from(*n) != i,
                        "{}: Buf({n})",
                        p.name
                    ),
                    Items => assert!(i + 2 < p.args.len(), "{}: Items", p.name),
                    OpenMode => assert_eq!(p.args[i - 1], OFLAGS, "{}", p.name),
                    Format | ScanFormat => {
                        assert_eq!(i + 1, p.args.len(), "{}: format not last", p.name)
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn aliases_find_their_function() {
        assert_eq!(lookup("strlen").unwrap().ret, Size);
        assert_eq!(lookup("__isoc99_sscanf").unwrap().name, "sscanf");
        assert_eq!(lookup("__isoc23_strtol").unwrap().name, "strtol");
        assert!(lookup("no_such_function").is_none());
    }
}
