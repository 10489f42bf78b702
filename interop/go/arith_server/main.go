// Command arith_server serves Arith over Go's net/rpc/jsonrpc, for netrpc's interop tests
// (tests/go_interop.rs) and by hand against examples/go_interop.rs.
//
//	go run ./arith_server [-addr 127.0.0.1:0]
//
// It prints "LISTENING <addr>" once it accepts connections, and exits when its standard
// input closes (so a test that dies cannot leave it running).
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"

	"netrpc.example/interop/arith"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	flag.Parse()

	server := rpc.NewServer()
	if err := server.Register(new(arith.Arith)); err != nil {
		log.Fatal(err)
	}
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("LISTENING %s\n", listener.Addr())

	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for {
		conn, err := listener.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go server.ServeCodec(jsonrpc.NewServerCodec(conn))
	}
}
