// Command arith_client calls Arith over Go's net/rpc/jsonrpc, for netrpc's interop tests
// (tests/go_interop.rs) and by hand against examples/go_interop.rs.
//
//	go run ./arith_client 127.0.0.1:1234 [WAIT]
//
// WAIT (a Go duration, such as 500ms) is how long it waits after dialling before its first
// call, as a program that dials at start and calls later does. It prints one line per check
// and exits 0 only if every result is right.
package main

import (
	"fmt"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
	"time"

	"netrpc.example/interop/arith"
)

// concurrentCalls is how many calls are in flight at once in the last check.
const concurrentCalls = 1000

func main() {
	if len(os.Args) < 2 || len(os.Args) > 3 {
		fmt.Fprintln(os.Stderr, "usage: arith_client HOST:PORT [WAIT]")
		os.Exit(2)
	}
	var wait time.Duration
	if len(os.Args) == 3 {
		parsed, err := time.ParseDuration(os.Args[2])
		if err != nil {
			fail("WAIT: %v", err)
		}
		wait = parsed
	}
	client, err := jsonrpc.Dial("tcp", os.Args[1])
	if err != nil {
		fail("dial: %v", err)
	}
	defer client.Close()
	time.Sleep(wait)

	var product, sum int
	call(client, "Arith.Multiply", &arith.Args{A: 7, B: 8}, &product)
	check(product == 56, "Multiply(7, 8) = %d", product)
	fmt.Printf("multiply %d\n", product)

	call(client, "Arith.Sum", &arith.Args{A: 7, B: 8}, &sum)
	check(sum == 15, "Sum(7, 8) = %d", sum)
	fmt.Printf("sum %d\n", sum)

	var quotient arith.Quotient
	call(client, "Arith.Divide", &arith.Args{A: 17, B: 5}, &quotient)
	check(quotient == arith.Quotient{Quo: 3, Rem: 2}, "Divide(17, 5) = %+v", quotient)
	fmt.Printf("divide %d %d\n", quotient.Quo, quotient.Rem)

	err = client.Call("Arith.Divide", &arith.Args{A: 1, B: 0}, &quotient)
	fmt.Printf("divide_by_zero error: %v\n", err)

	err = client.Call("Arith.Foo", &arith.Args{A: 1, B: 2}, &product)
	fmt.Printf("unknown_method error: %v\n", err)

	err = client.Call("Nope.Foo", &arith.Args{A: 1, B: 2}, &product)
	fmt.Printf("unknown_service error: %v\n", err)

	// The connection is still usable after the errors.
	call(client, "Arith.Multiply", &arith.Args{A: 6, B: 7}, &product)
	check(product == 42, "Multiply(6, 7) after errors = %d", product)
	fmt.Printf("after_errors %d\n", product)

	calls := make([]*rpc.Call, concurrentCalls)
	replies := make([]int, concurrentCalls)
	for i := range calls {
		calls[i] = client.Go("Arith.Multiply", &arith.Args{A: i, B: 3}, &replies[i], make(chan *rpc.Call, 1))
	}
	deadline := time.After(30 * time.Second)
	for i, c := range calls {
		select {
		case <-c.Done:
		case <-deadline:
			fail("concurrent call %d: no reply within 30 s", i)
		}
		if c.Error != nil {
			fail("concurrent call %d: %v", i, c.Error)
		}
		check(replies[i] == i*3, "concurrent Multiply(%d, 3) = %d", i, replies[i])
	}
	fmt.Printf("concurrent %d ok\n", concurrentCalls)
}

func call(client *rpc.Client, method string, args interface{}, reply interface{}) {
	if err := client.Call(method, args, reply); err != nil {
		fail("%s: %v", method, err)
	}
}

func check(ok bool, format string, values ...interface{}) {
	if !ok {
		fail(format, values...)
	}
}

func fail(format string, values ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL "+format+"\n", values...)
	os.Exit(1)
}
