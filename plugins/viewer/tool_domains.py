"""Which functional domain a command-line tool belongs to (the paper's Figure 3: tool diversity by domain).

The paper groups the tools its trajectories use into functional domains, from everyday file and
text work to networking, builds and specialised software. Which tools a trajectory ran is recorded
by the trajectories stage (``TrajectoryRecord.tools_used``, parsed by
:mod:`termigen_plugins.agent.tools`); this module only names their domain. A tool not listed is
``other``: the report shows how much of the data that is, so a gap in this table is visible
rather than hidden.
"""

from __future__ import annotations

import re

OTHER = "other"

#: Domain → the tools in it. A tool appears once; versioned names (``python3.11``, ``gcc-12``) are
#: reduced to their base name by :func:`domain_of` before the lookup.
DOMAINS: dict[str, frozenset[str]] = {
    "file operations": frozenset(
        "ls cp mv rm mkdir rmdir touch find stat ln chmod chown chgrp du df tree realpath readlink basename dirname "
        "file install mktemp rsync dd truncate split shred locate fd tee pwd".split()
    ),
    "text processing": frozenset(
        "cat head tail grep egrep fgrep rg ag sed awk gawk mawk cut sort uniq wc tr paste join comm diff patch nl fold "
        "fmt column tac rev less more iconv expand unexpand xxd od hexdump strings cmp vim vi nano ed emacs "
        "base64 dos2unix unix2dos colordiff".split()
    ),
    "structured data": frozenset("jq yq xmllint xmlstarlet csvtool csvcut csvlook csvstat mlr miller dasel envsubst".split()),
    "shell builtins": frozenset(
        "echo printf cd export source set unset read test true false exit alias type which eval declare local "
        "return shift trap wait sleep seq yes expr bc let".split()
    ),
    "package management": frozenset(
        "apt apt-get apt-cache dpkg dpkg-query pip pip3 pipx uv poetry conda mamba micromamba npm yarn pnpm gem "
        "bundle apk yum dnf rpm brew snap cpan cpanm composer".split()
    ),
    "python": frozenset("python python3 pytest ipython jupyter black flake8 mypy ruff pylint coverage tox".split()),
    "other languages": frozenset(
        "node npx deno bun java ruby perl php lua luajit julia ghc ghci runghc scala kotlin dotnet swift erl elixir "
        "bash sh zsh dash ksh fish tclsh".split()
    ),
    "build & compilation": frozenset(
        "make cmake gcc g++ cc c++ clang clang++ ld ar ranlib nm objcopy strip as pkg-config autoconf automake "
        "autoreconf libtool configure ninja meson rustc cargo go javac mvn gradle ant bazel scons ccache "
        "gfortran ldconfig".split()
    ),
    "version control": frozenset("git svn hg gh git-lfs".split()),
    "networking": frozenset(
        "curl wget ping nc netcat ncat ssh scp sftp telnet dig nslookup host ip ifconfig netstat ss traceroute "
        "tracepath nmap tcpdump iptables nft socat ftp route arp ethtool iperf iperf3 http httpie".split()
    ),
    "system administration": frozenset(
        "systemctl service ps kill pkill killall pgrep top htop free uptime uname whoami id useradd usermod userdel "
        "groupadd passwd su sudo crontab mount umount lsblk chroot journalctl env hostname date nproc lscpu ulimit "
        "nohup timeout xargs watch supervisorctl nginx apachectl apache2ctl lsof dmesg sysctl update-alternatives "
        "locale getent logger setfacl getfacl visudo runuser start-stop-daemon".split()
    ),
    "archives & compression": frozenset(
        "tar gzip gunzip zcat zip unzip bzip2 bunzip2 bzcat xz unxz xzcat 7z 7za zstd unzstd cpio lz4 zipinfo".split()
    ),
    "containers & infrastructure": frozenset(
        "docker podman kubectl helm docker-compose terraform ansible ansible-playbook vagrant minikube kind k3s".split()
    ),
    "databases": frozenset("sqlite3 psql mysql mariadb redis-cli mongo mongosh pg_dump pg_restore mysqldump duckdb".split()),
    "debugging & profiling": frozenset("gdb lldb strace ltrace valgrind perf objdump readelf ldd pdb time gprof".split()),
    "security & forensics": frozenset(
        "openssl gpg ssh-keygen hashcat john binwalk exiftool radare2 r2 checksec volatility md5sum sha1sum sha256sum "
        "sha512sum cksum chattr lsattr".split()
    ),
    "scientific & HPC": frozenset(
        "mpirun mpiexec srun sbatch squeue scancel sinfo nvidia-smi R Rscript octave gnuplot".split()
    ),
}

_BY_TOOL: dict[str, str] = {tool: domain for domain, tools in DOMAINS.items() for tool in tools}
#: ``python3.11`` → ``python3``, ``gcc-12`` → ``gcc``, ``pip3.11`` → ``pip3``.
_VERSION_SUFFIX = re.compile(r"(?:-?\d+(?:\.\d+)*)$")


def domain_of(tool: str) -> str:
    """The functional domain of ``tool`` (a program name as ``tools_used`` records it), or ``other``."""
    if tool in _BY_TOOL:
        return _BY_TOOL[tool]
    base = _VERSION_SUFFIX.sub("", tool)
    for candidate in (base, base + "3"):
        if candidate and candidate in _BY_TOOL:
            return _BY_TOOL[candidate]
    return OTHER
