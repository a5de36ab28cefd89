#!/usr/bin/env bash
# Make room to carry a training checkpoint to the device machine, whose working tree may hold at most 64 MiB:
#
#   bash bench/checkpoint_carry.sh prep SRC     # SRC: a checkpoint folder or a folder of checkpoint-*.tar
#   (device call with carry [".whl", "ckpt"] and  bench/train_small.py --resume ckpt ...)
#   bash bench/checkpoint_carry.sh restore
#
# prep copies SRC into ./ckpt (ignored through .git/info/exclude) and takes what a training job does not read out of
# the index and into .git/info/exclude: the bundled weights of tiny and small (37 MB), the committed results
# (bench/results, 18 MB) and training checkpoints (bench/checkpoints, e.g. SRC itself). They stay on disk but do not
# travel; restore puts them back. Nothing is committed; run restore before committing. Session 17 resumed `small` run
# 10 this way; session 22 needed bench/results left behind to carry two ladder rungs (2 x 20 MB) at once.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
left_behind=(sta_search/small/weights sta_search/tiny/weights bench/results)
[ -n "$(git ls-tree HEAD bench/checkpoints)" ] && left_behind+=(bench/checkpoints)  # committed: restore sees it too
exclude=.git/info/exclude
case ${1:-} in
    prep)
        src=${2:?usage: bench/checkpoint_carry.sh prep SRC}
        mkdir -p .git/info && touch "$exclude"
        rm -rf ckpt && mkdir ckpt
        if compgen -G "$src/checkpoint-*.tar" > /dev/null; then cp "$src"/checkpoint-*.tar ckpt/; else cp -r "$src"/. ckpt/; fi
        for p in /ckpt/ "${left_behind[@]/#//}"; do grep -qxF "${p%/}/" "$exclude" || echo "${p%/}/" >> "$exclude"; done
        git rm -r -q --cached "${left_behind[@]}"
        echo "ckpt: $(du -sh ckpt | cut -f1); tracked files now $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) bytes" ;;
    restore)
        git reset -q -- "${left_behind[@]}"
        for p in "${left_behind[@]}"; do sed -i "\#^/$p/\$#d" "$exclude"; done
        git status --short ;;
    *) echo "usage: bench/checkpoint_carry.sh prep SRC | restore" >&2; exit 2 ;;
esac
