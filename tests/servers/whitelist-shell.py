#!/usr/bin/python3
"""ForceCommand of the test "whitelist" server (tests/common/servers.rs).

Models a storage box that offers SFTP plus a few commands but no shell
(Hetzner Storage Box, rsync.net without a shell): the client's command
(SSH_ORIGINAL_COMMAND) is split with shlex, never given to a shell, refused
when it holds a shell metacharacter or names a command that is not on the
list, and otherwise executed directly, in the account's home (argv[1]).

Usage (sshd_config): ForceCommand /usr/bin/python3 THIS_FILE HOME
"""

import os
import shlex
import sys

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
# What a storage box refuses outright: anything a shell would interpret.
METACHARACTERS = set(";|&$`<>\\\n\r")
# argv[0] -> check of the whole argv.
ALLOWED = {
    # sshd passes the subsystem's command line from `Subsystem sftp ...`.
    SFTP_SERVER: lambda argv: len(argv) == 1,
    "rsync": lambda argv: len(argv) > 1 and argv[1] == "--server",
    "sha1sum": lambda argv: True,
    "mkdir": lambda argv: True,
    "ls": lambda argv: True,
}


def refuse(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


def main():
    home = sys.argv[1]
    command = os.environ.get("SSH_ORIGINAL_COMMAND")
    if command is None:
        refuse("interactive login not allowed")
    if any(c in METACHARACTERS for c in command):
        refuse("command not allowed: shell metacharacters")
    try:
        argv = shlex.split(command)
    except ValueError:
        refuse("command not allowed: unbalanced quotes")
    if not argv or argv[0] not in ALLOWED or not ALLOWED[argv[0]](argv):
        refuse("command not allowed: " + (argv[0] if argv else "(empty)"))
    os.chdir(home)
    os.execvp(argv[0], argv)


main()
