# soc2-control-summary.py — group events by control for the audit package
import json, sys
from collections import defaultdict
counts = defaultdict(int)
with open(sys.argv[1]) as f:
    for line in f:
        event = json.loads(line)
        for ctrl in event.get("soc2_controls", []):
            counts[ctrl] += 1
print("SOC2 control coverage summary:")
for ctrl, n in sorted(counts.items()):
    print(f" {ctrl}: {n} events")
