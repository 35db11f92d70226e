"""`eventrunner completion bash|zsh`: a completion script generated from the parser's table.

Our own script rather than argcomplete: argcomplete would be one more dependency imported by
every invocation (the no-change `run` is a whole process, and counts its milliseconds), while
a script printed once costs nothing at run time. Commands, options and choices are written
into the script; stage names are asked of the workspace when completed
(`eventrunner completion stages`). zsh runs the same function through bashcompinit.
"""

from __future__ import annotations

import argparse

from eventrunner.cli.parser import COMMANDS, STATE_NAMES

_TEMPLATE = r"""# eventrunner completion for bash; load it with: eval "$(eventrunner completion bash)"
_eventrunner_stages() {
    eventrunner ${1:+-w "$1"} completion stages 2>/dev/null
}
_eventrunner() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    local i word cmd="" ws="" positional=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        case "$word" in
            -w|--workspace) ws="${COMP_WORDS[i+1]}"; ((i++)) ;;
            --pipeline|--stage|--entity|--state|--limit|--format|--host|--port|-j|--jobs) ((i++)) ;;
            -*) ;;
            *) if [[ -z "$cmd" ]]; then cmd="$word"; else ((positional++)); fi ;;
        esac
    done
    case "$prev" in
        -w|--workspace) COMPREPLY=($(compgen -d -- "$cur")); return ;;
        --stage) COMPREPLY=($(compgen -W "$(_eventrunner_stages "$ws")" -- "$cur")); return ;;
        --state) COMPREPLY=($(compgen -W "@STATES@" -- "$cur")); return ;;
        --format) COMPREPLY=($(compgen -W "text mermaid dot" -- "$cur")); return ;;
        --pipeline|--entity|--limit|--host|--port|-j|--jobs) return ;;
    esac
    if [[ -z "$cmd" ]]; then
        if [[ "$cur" == -* ]]; then
            COMPREPLY=($(compgen -W "-w --workspace -v --verbose --version -h --help" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "@COMMANDS@" -- "$cur"))
        fi
        return
    fi
    if [[ "$cur" == -* ]]; then
        local opts=""
        case "$cmd" in
@OPTIONS@
        esac
        COMPREPLY=($(compgen -W "$opts -w --workspace -v --verbose -h --help" -- "$cur"))
        return
    fi
    case "$cmd" in
        invalidate|hold|release|retry)
            if ((positional == 0)); then
                COMPREPLY=($(compgen -W "$(_eventrunner_stages "$ws")" -- "$cur"))
            fi ;;
        init) COMPREPLY=($(compgen -d -- "$cur")) ;;
        completion) ((positional == 0)) && COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
    esac
}
complete -F _eventrunner eventrunner
"""

_ZSH_PREFIX = """# eventrunner completion for zsh; load it with: eval "$(eventrunner completion zsh)"
(( $+functions[compdef] )) || { autoload -U compinit && compinit }
autoload -U +X bashcompinit && bashcompinit
"""


def _options(name: str) -> list[str]:
    """Every option string of one command (its --json included)."""
    _help, _examples, reads, arguments = COMMANDS[name]
    opts = [flag for flags, _ in arguments for flag in flags if flag.startswith("-")]
    return [*opts, *(["--json"] if reads else [])]


def script(shell: str) -> str:
    """The completion script for bash or zsh."""
    cases = "\n".join(
        f'            {name}) opts="{" ".join(_options(name))}" ;;'
        for name in COMMANDS
        if _options(name)
    )
    text = (
        _TEMPLATE.replace("@COMMANDS@", " ".join(COMMANDS))
        .replace("@STATES@", STATE_NAMES.replace(",", ""))
        .replace("@OPTIONS@", cases)
    )
    return _ZSH_PREFIX + text if shell == "zsh" else text


def cmd_completion(args: argparse.Namespace) -> int:
    """Print a script, or (`stages`) the workspace's stage names, bare and qualified."""
    if args.shell != "stages":
        print(script(args.shell), end="")
        return 0
    from eventrunner.cli.common import workspace_path
    from eventrunner.workspace.load import load_workspace

    graph = load_workspace(workspace_path(args)).graph
    names = sorted({*graph.stages, *(s.name for s in graph.stages.values())})
    print("\n".join(names))
    return 0
