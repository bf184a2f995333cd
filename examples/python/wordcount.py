"""CPN example job: count lines, words and the most common words of a text file.

Runs inside the container (standard library only):
    python3 wordcount.py INPUT OUTPUT_JSON
"""

import collections
import hashlib
import json
import os
import platform
import re
import sys


def main(src: str, dest: str) -> int:
    with open(src, "rb") as f:
        data = f.read()
    text = data.decode("utf-8")
    words = re.findall(r"[a-z']+", text.lower())
    top = int(os.environ.get("TOP_WORDS", "5"))
    result = {
        "input_sha256": hashlib.sha256(data).hexdigest(),
        "lines": text.count("\n"),
        "words": len(words),
        "top_words": collections.Counter(words).most_common(top),
        "python": platform.python_version(),
    }
    with open(dest, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"{result['words']} words, {result['lines']} lines -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
