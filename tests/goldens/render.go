// Renders loraloop's Modelfile TEMPLATEs with Go's own text/template, the way Ollama's /api/chat prepares a
// chat, into golden prompt files. tests/deploy/test_modelfile_served.py checks that loraloop's Python interpreter
// (deploy/go_template.py), which the Ollama-API test server renders with, reproduces each file exactly.
//
//	go run tests/goldens/render.go tests/goldens/cases.json tests/goldens/prompts
//
// Standard library only, Go 1.19 or later.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// What a template sees for each message (Ollama passes more fields; they are empty in a plain chat).
type templateMessage struct {
	Role      string
	Content   string
	Thinking  string
	ToolCalls []any
	ToolName  string
	Images    []any
}

type model struct {
	Template string `json:"template"`
	System   string `json:"system"`
}

type cases struct {
	Models map[string]model     `json:"models"`
	Chats  map[string][]message `json:"chats"`
}

// Ollama's chat handler: the model's SYSTEM goes first when the chat does not open with a system message; roles
// are lower-cased when the request is decoded.
func withSystem(m model, chat []message) []message {
	out := make([]message, 0, len(chat)+1)
	if m.System != "" && (len(chat) == 0 || strings.ToLower(chat[0].Role) != "system") {
		out = append(out, message{Role: "system", Content: m.System})
	}
	for _, c := range chat {
		out = append(out, message{Role: strings.ToLower(c.Role), Content: c.Content})
	}
	return out
}

// Every system message's text joined by a blank line becomes .System; consecutive messages of one role (tool
// results excepted) are merged into one.
func collate(msgs []message) (string, []templateMessage) {
	var system []string
	var out []templateMessage
	for _, m := range msgs {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(out); n > 0 && out[n-1].Role == m.Role && m.Role != "tool" {
			out[n-1].Content += "\n\n" + m.Content
			continue
		}
		out = append(out, templateMessage{Role: m.Role, Content: m.Content})
	}
	return strings.Join(system, "\n\n"), out
}

func render(m model, chat []message) (string, error) {
	t, err := template.New("").Option("missingkey=zero").Parse(m.Template)
	if err != nil {
		return "", err
	}
	system, msgs := collate(withSystem(m, chat))
	var b strings.Builder
	err = t.Execute(&b, map[string]any{"System": system, "Messages": msgs, "Tools": []any{}, "Response": ""})
	return b.String(), err
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go run render.go CASES.json OUT_DIR")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var c cases
	if err := json.Unmarshal(raw, &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := os.MkdirAll(os.Args[2], 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	names := make([]string, 0, len(c.Models))
	for name := range c.Models {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		for chatName, chat := range c.Chats {
			out, err := render(c.Models[name], chat)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s/%s: %v\n", name, chatName, err)
				os.Exit(1)
			}
			path := filepath.Join(os.Args[2], name+"--"+chatName+".txt")
			if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	}
}
