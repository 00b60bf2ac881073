// The pod sandbox ("pause") image's only binary; see main.go.
module github.com/anytasktune/hack/pause

go 1.23.0
