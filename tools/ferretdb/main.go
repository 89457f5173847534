// Command ferretdb runs FerretDB v1.24 with its SQLite handler: the project's local stand-in for
// MongoDB in `make run` and the tests.
//
// It wraps the embeddable package because `go install .../cmd/ferretdb@v1.24.2` needs the module
// proxy's version list (refused here) and a cmd build outside FerretDB's own tree lacks its
// generated version file.
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on")
	sqliteURL := flag.String("sqlite-url", "file:data/", "SQLite data directory URL (must end with /)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: *sqliteURL,
	})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("ferretdb listening on %s (sqlite %s)", *listen, *sqliteURL)
	if err := f.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
