// Command ferretdb runs FerretDB v1.24 with its PostgreSQL handler: the project's local stand-in
// for MongoDB in `make run` and the tests (tools/cluster.py starts PostgreSQL 15 first).
//
// It wraps the embeddable package because FerretDB's own cmd/ferretdb, built outside FerretDB's
// tree (`go install .../cmd/ferretdb@v1.24.2`), panics at start: its generated version file is missing.
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
	postgresURL := flag.String("postgresql-url", "postgres://postgres@127.0.0.1:5432/postgres", "PostgreSQL database URL (tools/cluster.py passes its own)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:      ferretdb.ListenerConfig{TCP: *listen},
		Logger:        logger,
		Handler:       "postgresql",
		PostgreSQLURL: *postgresURL,
	})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("ferretdb listening on %s (postgresql %s)", *listen, *postgresURL)
	if err := f.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
