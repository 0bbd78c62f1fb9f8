// tlogcheck checks flagtrail's Merkle proofs with Go's own transparency-log code
// (golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog), none of flagtrail's.
//
// Usage: tlogcheck -vkey VKEY -origin ORIGIN -proof PKG.proof.json -jsonl PKG.jsonl
//
// It opens the package's checkpoint with a verifier built from VKEY, checks the
// inclusion proofs of the window's first and last records (tlog.CheckRecord), hashes
// every record of the window into the tree after the package's compact range and
// checks the consistency of that tree with the checkpoint (tlog.StoredHashes,
// tlog.TreeHash, tlog.CheckTree), and checks the consistency proof from the previous
// export's checkpoint (tlog.CheckTree). Exit 0 prints what it checked; exit 1 says why not.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type proofFile struct {
	Checkpoint string `json:"checkpoint"`
	Window     struct {
		Begin int64 `json:"begin"`
		End   int64 `json:"end"`
	} `json:"window"`
	RangeProof []string `json:"range_proof"`
	Inclusion  []struct {
		Index int64    `json:"index"`
		Proof []string `json:"proof"`
	} `json:"inclusion"`
	Previous *struct {
		Checkpoint       string   `json:"checkpoint"`
		ConsistencyProof []string `json:"consistency_proof"`
	} `json:"previous"`
}

type tree struct {
	origin string
	size   int64
	root   tlog.Hash
}

func openCheckpoint(msg string, verifier note.Verifier, origin string) (tree, error) {
	n, err := note.Open([]byte(msg), note.VerifierList(verifier))
	if err != nil {
		return tree{}, fmt.Errorf("checkpoint signature: %w", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 {
		return tree{}, errors.New("checkpoint has fewer than three lines")
	}
	if lines[0] != origin {
		return tree{}, fmt.Errorf("checkpoint origin %q is not %q", lines[0], origin)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		return tree{}, fmt.Errorf("checkpoint size %q", lines[1])
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		return tree{}, fmt.Errorf("checkpoint root hash %q", lines[2])
	}
	var root tlog.Hash
	copy(root[:], raw)
	return tree{lines[0], size, root}, nil
}

func hashes(list []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(list))
	for i, s := range list {
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(raw) != tlog.HashSize {
			return nil, fmt.Errorf("proof hash %d is not 32 bytes of base64", i)
		}
		copy(out[i][:], raw)
	}
	return out, nil
}

type memory map[int64]tlog.Hash

func (m memory) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		h, ok := m[x]
		if !ok {
			return nil, fmt.Errorf("hash %d is not in the proof", x)
		}
		out[i] = h
	}
	return out, nil
}

func readLines(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines [][]byte
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 1<<20), 64<<20)
	for scanner.Scan() {
		lines = append(lines, bytes.Clone(scanner.Bytes()))
	}
	return lines, scanner.Err()
}

func check(vkey, origin, proofPath, jsonlPath string) error {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("verifier key: %w", err)
	}
	data, err := os.ReadFile(proofPath)
	if err != nil {
		return err
	}
	var p proofFile
	if err := json.Unmarshal(data, &p); err != nil {
		return fmt.Errorf("proof file: %w", err)
	}
	t, err := openCheckpoint(p.Checkpoint, verifier, origin)
	if err != nil {
		return err
	}
	fmt.Printf("checkpoint: %s size %d signed by %s\n", t.origin, t.size, verifier.Name())
	lines, err := readLines(jsonlPath)
	if err != nil {
		return err
	}
	begin, end := p.Window.Begin, p.Window.End
	if begin < 0 || end < begin || end > t.size || int64(len(lines)) != end-begin {
		return fmt.Errorf("window [%d, %d) of %d records does not fit the tree of %d", begin, end, len(lines), t.size)
	}
	for _, inc := range p.Inclusion {
		if inc.Index < begin || inc.Index >= end {
			return fmt.Errorf("inclusion proof for leaf %d outside the window", inc.Index)
		}
		proof, err := hashes(inc.Proof)
		if err != nil {
			return err
		}
		leaf := tlog.RecordHash(lines[inc.Index-begin])
		if err := tlog.CheckRecord(proof, t.size, t.root, inc.Index, leaf); err != nil {
			return fmt.Errorf("inclusion of leaf %d: %w", inc.Index, err)
		}
		fmt.Printf("inclusion: leaf %d in tree %d (tlog.CheckRecord)\n", inc.Index, t.size)
	}
	// every record: the compact range of [0, begin), then each record's stored hashes
	rng, err := hashes(p.RangeProof)
	if err != nil {
		return err
	}
	stored := memory{}
	at, used := int64(0), 0
	for level := 62; level >= 0; level-- {
		if begin&(int64(1)<<level) == 0 {
			continue
		}
		if used >= len(rng) {
			return errors.New("range proof too short")
		}
		stored[tlog.StoredHashIndex(level, at>>level)] = rng[used]
		at += int64(1) << level
		used++
	}
	for i := begin; i < end; i++ {
		hs, err := tlog.StoredHashes(i, lines[i-begin], stored)
		if err != nil {
			return fmt.Errorf("record %d: %w", i, err)
		}
		for k, h := range hs {
			stored[tlog.StoredHashIndex(0, i)+int64(k)] = h
		}
	}
	windowRoot, err := tlog.TreeHash(end, stored)
	if err != nil {
		return fmt.Errorf("tree at %d: %w", end, err)
	}
	if err := tlog.CheckTree(rng[used:], t.size, t.root, end, windowRoot); err != nil {
		return fmt.Errorf("window records vs checkpoint: %w", err)
	}
	fmt.Printf("range: all %d records [%d, %d) in tree %d (tlog.StoredHashes, TreeHash, CheckTree)\n", end-begin, begin, end, t.size)
	if p.Previous != nil {
		old, err := openCheckpoint(p.Previous.Checkpoint, verifier, origin)
		if err != nil {
			return fmt.Errorf("previous %w", err)
		}
		proof, err := hashes(p.Previous.ConsistencyProof)
		if err != nil {
			return err
		}
		if err := tlog.CheckTree(proof, t.size, t.root, old.size, old.root); err != nil {
			return fmt.Errorf("consistency from %d to %d: %w", old.size, t.size, err)
		}
		fmt.Printf("consistency: tree %d extends tree %d (tlog.CheckTree)\n", t.size, old.size)
	}
	return nil
}

func main() {
	vkey := flag.String("vkey", "", "the log's note verifier key")
	origin := flag.String("origin", "", "the chain's checkpoint origin")
	proof := flag.String("proof", "", "the package's .proof.json")
	jsonl := flag.String("jsonl", "", "the package's .jsonl")
	flag.Parse()
	if err := check(*vkey, *origin, *proof, *jsonl); err != nil {
		fmt.Fprintln(os.Stderr, "tlogcheck:", err)
		os.Exit(1)
	}
	fmt.Println("ok")
}
