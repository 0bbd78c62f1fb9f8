#!/usr/bin/env bash
# soc2-evidence-pull.sh — produce a signed evidence export for a SOC2 audit window
set -euo pipefail
START="${1:?Usage: $0 YYYY-MM-DD YYYY-MM-DD}"
END="${2:?}"
OUTFILE="flag-audit-soc2_${START}_${END}.jsonl"
SIGFILE="${OUTFILE}.sig"
echo "Pulling audit events ${START} → ${END}…"
curl -sf "https://audit-api.internal/v1/export" \
-H "Authorization: Bearer ${AUDIT_TOKEN}" \
--data-urlencode "start=${START}" \
--data-urlencode "end=${END}" \
--data-urlencode "controls=CC6.1,CC6.6,CC8.1" \
-o "${OUTFILE}"
EVENT_COUNT=$(wc -l < "${OUTFILE}")
echo "Events exported: ${EVENT_COUNT}"
# Sign the export file
openssl dgst -sha256 -sign "${AUDIT_SIGNING_KEY_PATH}" \
-out "${SIGFILE}" "${OUTFILE}"
# Print the manifest for the auditor
echo "---"
echo "Evidence file : ${OUTFILE}"
echo "Signature file: ${SIGFILE}"
echo "SHA-256 : $(sha256sum "${OUTFILE}" | awk '{print $1}')"
echo "Verify with : openssl dgst -sha256 -verify audit-public.pem -signature ${SIGFILE} ${OUTFILE}"
